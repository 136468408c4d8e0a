"""The corpus assembly: every modality's items, their truth masks, then the annotations written beside them.

Three modes (`MODES`, `python -m data sample --mode NAME`): 'sample', the three-modality sample corpus
(`MAKERS`, `ANNOTATIONS`), 'control', the masking study's positive control (`data.sample.control`: one
class per item decided by the lesion's texture only; `CONTROL_ANNOTATIONS` add the pretraining manifest), and
'volumes', CT and MR series whose target lies on the middle slices only (`data.sample.volumes`).

Extending the generator:

- a new kind of image (a modality): a module with a `ModalitySpec` and a `make_items(out, n, seed, size)` that
  writes its files and yields its items, added to `MAKERS`; a corpus of its own (a task like the control):
  a `CorpusMode` added to `MODES`;
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
from data.sample import control, control_shapes, ct, mr, volumes, xr
from data.sample.annotations import (
    COCO_JSON,
    LABELS_CSV,
    README,
    SPLIT_FRACTIONS,
    assign_splits,
    write_coco,
    write_labels,
    write_readme,
)
from data.sample.control_annotations import (
    CONTROL_SPLIT_FRACTIONS,
    PRETRAIN_DIR,
    write_control_readme,
    write_control_shapes_readme,
    write_pretrain_manifest,
)
from data.sample.label_volumes import write_label_volumes
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
CONTROL_ANNOTATIONS: tuple[Annotation, ...] = (
    Annotation("coco/", write_coco),
    Annotation(LABELS_CSV, write_labels),
    Annotation(PRETRAIN_DIR + "/", write_pretrain_manifest),
    Annotation(README, write_control_readme),
)


@dataclass(frozen=True)
class CorpusMode:
    """One kind of corpus: its makers, the files written beside the items, the split and the size limits."""

    makers: tuple[ModalityMaker, ...]
    annotations: tuple[Annotation, ...]
    split_fractions: tuple[tuple[str, float], ...] = SPLIT_FRACTIONS
    default_size: int = 128
    min_n: int = MIN_N
    min_size: int = MIN_SIZE

    @property
    def modalities(self) -> tuple:
        return tuple(maker.spec for maker in self.makers)


MODES: dict[str, CorpusMode] = {
    "sample": CorpusMode(MAKERS, ANNOTATIONS),
    # 4 items: one per texture class; 32 px: the smallest lesion (0.14 x size x 0.7 px radius) still fits
    "control": CorpusMode(
        (ModalityMaker(control.SPEC, control.make_items),),
        CONTROL_ANNOTATIONS,
        CONTROL_SPLIT_FRACTIONS,
        default_size=96,
        min_n=4,
        min_size=32,
    ),
    # issue 26: the class is the lesion's outline over a smooth background (data.sample.control_shapes)
    "control_shapes": CorpusMode(
        (ModalityMaker(control.SPEC, control_shapes.make_items),),
        (*CONTROL_ANNOTATIONS[:-1], Annotation(README, write_control_shapes_readme)),
        CONTROL_SPLIT_FRACTIONS,
        default_size=64,
        min_n=4,
        min_size=32,
    ),
    # CT and MR series with the target on the middle slices only (bench/volume_rule.py); n = slices per modality
    "volumes": CorpusMode(
        (ModalityMaker(mr.SPEC, volumes.make_mr_items), ModalityMaker(ct.SPEC, volumes.make_ct_items)),
        (
            Annotation("coco/", write_coco),
            Annotation(LABELS_CSV, write_labels),
            Annotation(README, volumes.write_volumes_readme),
        ),
        min_n=volumes.VOLUME_DEPTH,
    ),
}


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
    size: int | None = None,
    report_share: float = REPORT_SHARE,
    progress: bool = False,
    mode: str = "sample",
) -> SampleSummary:
    """Write the corpus of `mode` (`MODES`: sample, control, control_shapes, volumes) into `out`; return a summary.

    'sample' (size default 128): exactly `n` 2-D items per modality: MR slices in ceil(n/4) volumes; CT as
    max(2, n//4) frames of one multi-frame file plus the rest as single-frame slices in series of <= 4; n X-ray
    PNGs. n // 2 items per modality carry 1 or 2 lesions. 'control' (size default 96): `n` textured-lesion
    images (`data.sample.control`); 'control_shapes' (size default 64) the same with the class in the lesion's
    outline (`data.sample.control_shapes`). Sample mode also writes a short report for `report_share` of each modality's
    non-test images (reports.csv, `data.sample.reports`); the other files do not depend on it. The output depends
    only on (mode, n, seed, size, report_share) (`seed` >= 0, n >= 3 or 4, size >= 48 or 32, 0 <= report_share <= 1).
    `out` must be new, empty, or hold an earlier sample corpus, whose files are replaced.
    """
    out = Path(out)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)} (got {mode!r})")
    spec = MODES[mode]
    size = spec.default_size if size is None else size
    if n < spec.min_n:
        raise ValueError(f"n must be >= {spec.min_n} (got {n})")
    if size < spec.min_size:
        raise ValueError(f"size must be >= {spec.min_size} (got {size})")
    if seed < 0:
        raise ValueError(f"seed must be >= 0 (got {seed})")
    if not 0 <= report_share <= 1:
        raise ValueError(f"report_share must be in [0, 1] (got {report_share})")
    _clear_previous(out)
    out.mkdir(parents=True, exist_ok=True)

    items: list[Item] = []
    with tqdm(total=len(spec.makers) * n, desc=f"{mode} corpus", unit="img", disable=not progress) as bar:
        for maker in spec.makers:
            for item in maker.make_items(out, n, seed, size):
                truth_hw = item.rendered.truth_hw.astype(np.uint8) * 255
                write_png(out / TRUTH_DIR / f"{item.item_id}.png", truth_hw)
                items.append(item)
                bar.update(1)
    if mode == "sample":  # the first CT series' truth also as a NIfTI label volume and a DICOM SEG
        write_label_volumes(out / TRUTH_DIR, items)

    modalities = spec.modalities
    corpus = SampleCorpus(
        out, modalities, items, assign_splits(items, seed, spec.split_fractions), n, seed, size, report_share
    )
    for annotation in spec.annotations:
        annotation.write(corpus)
    # Annotations live beside the images; `data scan` must not take them for corpus images.
    (out / SCANIGNORE).write_text("".join(f"{name}\n" for name in _annotation_names(spec.annotations)))
    writes_reports = any(annotation.name == REPORTS_CSV for annotation in spec.annotations)

    return SampleSummary(
        root=out,
        items={m.code: sum(i.modality is m for i in items) for m in modalities},
        positives={m.code: sum(i.modality is m and i.positive for i in items) for m in modalities},
        annotations=sum(len(i.rendered.lesions) for i in items),
        labels_csv=out / LABELS_CSV,
        coco_json=out / COCO_JSON,
        reports=len(reported_items(corpus, report_share)) if writes_reports else 0,
        reports_csv=out / REPORTS_CSV if writes_reports else None,
    )


def _annotation_names(annotations: tuple[Annotation, ...]) -> list[str]:
    """The truth folder and every annotation's file or folder name ('name/' for a folder)."""
    return [f"{TRUTH_DIR}/", *dict.fromkeys(annotation.name for annotation in annotations)]


def _clear_previous(out: Path) -> None:
    """Allow rewriting a folder only when it is empty or holds a previous sample corpus (of which we remove ours)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise NotADirectoryError(f"{out}: exists and is not a folder")
    readme = out / README
    if readme.is_file() and readme.read_text(errors="replace").startswith(README_MARKER):
        every_mode = MODES.values()
        for spec in {m for mode in every_mode for m in mode.modalities}:
            shutil.rmtree(out / spec.folder, ignore_errors=True)
        for name in _annotation_names(tuple(a for mode in every_mode for a in mode.annotations)):
            if name.endswith("/"):
                shutil.rmtree(out / name, ignore_errors=True)
            else:
                (out / name).unlink(missing_ok=True)
        (out / SCANIGNORE).unlink(missing_ok=True)
    elif any(out.iterdir()):
        raise FileExistsError(f"{out}: folder is not empty and holds no sample corpus; choose a new or empty folder")
