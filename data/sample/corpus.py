"""The corpus assembly: every modality's items, their truth masks, then the annotations written beside them.

Extending the generator:

- a new kind of image (a modality, or a positive-control task): a module with a `ModalitySpec` and a
  `make_items(out, n, seed, size)` that writes its files and yields its items, added to `MAKERS`;
- a new file written from the finished items (e.g. a report per image): a function of the `SampleCorpus`,
  added to `ANNOTATIONS` under the file or folder name it writes (`data scan` then skips it).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.manifest import SCANIGNORE
from data.sample import ct, mr, xr
from data.sample.annotations import COCO_JSON, LABELS_CSV, README, assign_splits, write_coco, write_labels, write_readme
from data.sample.reports import REPORT_SHARE, REPORTS_CSV, reported_items, write_reports
from data.sample.spec import README_MARKER, Annotation, Item, ModalityMaker, SampleCorpus
from data.sample.writers import write_png

MIN_N = 3  # CT needs a multi-frame file with >= 2 frames and at least one single-frame slice
MIN_SIZE = 48
TRUTH_DIR = "truth"

MAKERS: tuple[ModalityMaker, ...] = (
    ModalityMaker(mr.SPEC, mr.make_items),
    ModalityMaker(ct.SPEC, ct.make_items),
    ModalityMaker(xr.SPEC, xr.make_items),
)
MODALITIES = tuple(maker.spec for maker in MAKERS)
ANNOTATIONS: tuple[Annotation, ...] = (
    Annotation("coco/", write_coco),
    Annotation(LABELS_CSV, write_labels),
    Annotation(README, write_readme),
    Annotation(REPORTS_CSV, write_reports),
)


@dataclass(frozen=True)
class SampleSummary:
    """What `write_sample_corpus` wrote."""

    root: Path
    items: dict[str, int]  # modality code -> number of 2-D items
    positives: dict[str, int]  # modality code -> items with >= 1 lesion
    annotations: int  # COCO lesion instances
    labels_csv: Path
    coco_json: Path
    reports: int = 0  # images with a report
    reports_csv: Path | None = None


def write_sample_corpus(
    out: Path,
    n: int = 12,
    seed: int = 0,
    *,
    size: int = 128,
    report_share: float = REPORT_SHARE,
    progress: bool = False,
) -> SampleSummary:
    """Write the sample corpus into `out` and return what was written.

    Exactly `n` 2-D items per modality: MR slices in ceil(n/4) volumes; CT as max(2, n//4) frames of one multi-frame
    file plus the rest as single-frame slices in series of <= 4; n X-ray PNGs. n // 2 items per modality carry 1 or
    2 lesions. A short report is written for `report_share` of each modality's non-test images (reports.csv,
    `data.sample.reports`); the other files do not depend on it. The output depends only on (n, seed, size,
    report_share) (`seed` >= 0, n >= 3, size >= 48, 0 <= report_share <= 1). `out` must be new, empty, or hold an
    earlier sample corpus, whose files are replaced.
    """
    out = Path(out)
    if n < MIN_N:
        raise ValueError(f"n must be >= {MIN_N} (got {n})")
    if size < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE} (got {size})")
    if seed < 0:
        raise ValueError(f"seed must be >= 0 (got {seed})")
    if not 0 <= report_share <= 1:
        raise ValueError(f"report_share must be in [0, 1] (got {report_share})")
    _clear_previous(out)
    out.mkdir(parents=True, exist_ok=True)

    items: list[Item] = []
    with tqdm(total=len(MAKERS) * n, desc="sample corpus", unit="img", disable=not progress) as bar:
        for maker in MAKERS:
            for item in maker.make_items(out, n, seed, size):
                truth_hw = item.rendered.truth_hw.astype(np.uint8) * 255
                write_png(out / TRUTH_DIR / f"{item.item_id}.png", truth_hw)
                items.append(item)
                bar.update(1)

    corpus = SampleCorpus(out, MODALITIES, items, assign_splits(items, seed), n, seed, size, report_share)
    for annotation in ANNOTATIONS:
        annotation.write(corpus)
    # Annotations live beside the images; `data scan` must not take them for corpus images.
    (out / SCANIGNORE).write_text("".join(f"{name}\n" for name in _annotation_names()))

    return SampleSummary(
        root=out,
        items={m.code: sum(i.modality is m for i in items) for m in MODALITIES},
        positives={m.code: sum(i.modality is m and i.positive for i in items) for m in MODALITIES},
        annotations=sum(len(i.rendered.lesions) for i in items),
        labels_csv=out / LABELS_CSV,
        coco_json=out / COCO_JSON,
        reports=len(reported_items(corpus, report_share)),
        reports_csv=out / REPORTS_CSV,
    )


def _annotation_names() -> list[str]:
    """The truth folder and every annotation's file or folder name ('name/' for a folder)."""
    return [f"{TRUTH_DIR}/", *(annotation.name for annotation in ANNOTATIONS)]


def _clear_previous(out: Path) -> None:
    """Allow rewriting a folder only when it is empty or holds a previous sample corpus (of which we remove ours)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise NotADirectoryError(f"{out}: exists and is not a folder")
    readme = out / README
    if readme.is_file() and readme.read_text(errors="replace").startswith(README_MARKER):
        for spec in MODALITIES:
            shutil.rmtree(out / spec.folder, ignore_errors=True)
        for name in _annotation_names():
            if name.endswith("/"):
                shutil.rmtree(out / name, ignore_errors=True)
            else:
                (out / name).unlink(missing_ok=True)
        (out / SCANIGNORE).unlink(missing_ok=True)
    elif any(out.iterdir()):
        raise FileExistsError(f"{out}: folder is not empty and holds no sample corpus; choose a new or empty folder")
