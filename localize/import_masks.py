"""`python -m localize import`: bring existing ROI masks into a ROI cache, or build a shuffled-ROI control cache.

Two ways to fill a cache without running BiomedCLIP / SAM:

* ``--masks DIR``: one PNG per item, ``DIR/<item_id>.png`` (any non-zero colour = ROI, as `data.masks` reads
  it; any size: it is resized to the item's size). Ground-truth segmentations (an upper bound on what
  localization can give) or segmentations a user already has. Provenance ``{"source": "imported", "masks":
  <SHA-256 of the mask files>, ...}``. Items without a mask file are recorded failed ("no mask file
  <item_id>.png"); the rest are done. Resumable like `localize run`: done items are skipped, and a rerun with
  other mask files is refused (their digest differs).
* ``--shuffle-from CACHE``: item i gets the ROI of another item j of the same modality (a seeded
  derangement over the source's done items), so pretraining sees ROIs of the right size and shape but
  in the wrong place: it tells whether the ROI's content matters or only the masking ratio it implies.
  Provenance ``{"source": "shuffled", "from": <source provenance>, "seed": S}``.
* ``--label-volumes LIST.csv``: NIfTI label volumes and DICOM SEG objects (`data.label_volumes`: columns label,
  images), matched to the image slices by geometry; a grid that does not match is refused before anything is
  written, naming the file and the reason. Items of no listed series are failed ("no label volume covers ...").
  Provenance ``{"source": "imported", "masks": <SHA-256 of the list and the label files>, ...}``.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from data.hashing import update_with_file
from data.label_volumes import CorpusLabels
from data.manifest import read_manifest, scan_corpus
from data.masks import read_mask_image
from data.portable import portable_path
from data.roi_cache import DONE, FLAG_EMPTY_ROI, CacheGeometry, RoiCache
from data.roi_rects import expanded_rects
from localize.components import prompt_boxes
from localize.job import RunSummary, summarize

log = logging.getLogger(__name__)
BATCH_ITEMS = 64  # items per cache write (status written last per write: an interrupted run redoes at most these)


# ------------------------------------------------------------------------------------------ masks from files
def mask_digest(masks_dir: Path, item_ids: Sequence[str]) -> tuple[str, int]:
    """SHA-256 over (name, bytes) of the mask files that exist for `item_ids`, and how many there are."""
    digest = hashlib.sha256()
    count = 0
    for item_id in sorted(item_ids):
        path = masks_dir / f"{item_id}.png"
        if path.is_file():
            digest.update(path.name.encode() + b"\0")
            update_with_file(digest, path)
            count += 1
    return digest.hexdigest(), count


def read_mask_file(path: Path, size_hw: tuple[int, int]) -> np.ndarray:
    """A mask image (`data.masks.read_mask_image`) as uint8 0/1 at `size_hw` (nearest resize)."""
    mask_hw = read_mask_image(path).astype(np.uint8)
    h, w = size_hw
    if mask_hw.shape != (h, w):
        mask_hw = cv2.resize(mask_hw, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    return mask_hw


def import_masks(
    masks_dir: str | Path | None,
    cache_path: str | Path,
    *,
    corpus: str | Path | None = None,
    manifest_path: str | Path | None = None,
    geometry: CacheGeometry | None = None,
    retry_failed: bool = False,
    progress: bool = True,
    label_volumes: str | Path | None = None,
) -> RunSummary:
    """Write `masks_dir/<item_id>.png` for every item of the corpus (or manifest) into the cache at `cache_path`.

    Boxes are the bounding boxes (xyxy, end-exclusive pixels) of the `max_boxes` largest 8-connected
    components; the expanded ROI is the release's rectangles of every component (`data.roi_rects`, rule "sam",
    ratio 1.0: the mask stands where SAM's output would); saliency is the mask x 255; score 1.0; an all-zero mask
    is done with the empty-ROI flag. A mask with more components than the cache's `max_rects` is a recorded failure.
    With `label_volumes` (a list of NIfTI label volumes / DICOM SEG objects, `data.label_volumes`; `masks_dir`
    None) the masks come from those, matched by geometry to the images of `corpus`, which it needs.
    """
    geometry = geometry or CacheGeometry()
    started = time.perf_counter()
    cache_path = Path(cache_path)
    if (masks_dir is None) == (label_volumes is None):
        raise ValueError("give a masks folder or a label volume list, one of them")
    if label_volumes is not None and corpus is None:
        raise ValueError("--label-volumes matches the masks to the images by their headers: give the corpus (--corpus)")
    masks_dir = None if masks_dir is None else Path(masks_dir)
    if masks_dir is not None and not masks_dir.is_dir():
        raise FileNotFoundError(f"{masks_dir}: masks folder not found (expected <item_id>.png files)")
    if cache_path.exists():
        manifest = RoiCache.open(cache_path).manifest()
    elif manifest_path is not None:
        manifest = read_manifest(manifest_path)
    elif corpus is not None:
        manifest, failures = scan_corpus(corpus, progress=progress)
        if len(failures):
            log.warning("%d files could not be read during the scan and are not in the cache", len(failures))
    else:
        raise ValueError("give the corpus (--corpus) or a manifest (--manifest) to create a new cache")
    volumes = None if label_volumes is None else CorpusLabels(label_volumes, corpus, manifest)
    if volumes is None:
        digest, count = mask_digest(masks_dir, manifest["item_id"].astype(str).tolist())
    else:
        digest, count = volumes.digest(), len(volumes.labels)
    provenance = {
        "source": "imported",
        "masks": digest,
        "mask_files": count,
        "binarise": "any colour channel != 0; alpha 0 = background",
        "boxes": f"bounding boxes of the {geometry.max_boxes} largest 8-connected components",
        "rects": {"rule": "sam", "expand_ratio": 1.0},
    }
    if volumes is not None:  # matched by geometry (data.label_volumes): what the masks were taken from differs
        provenance.update(binarise="label value != 0 (NIfTI voxel value, SEG segment)", mask_files_kind="label volumes")
    if cache_path.exists():
        cache = RoiCache.open(cache_path, mode="r+", provenance=provenance)
    else:
        cache = RoiCache.create(cache_path, manifest, provenance, geometry=geometry)
    todo = cache.pending(include_failed=retry_failed)
    with tqdm(total=len(todo), unit="img", desc="import", disable=not progress) as bar:
        for start in range(0, len(todo), BATCH_ITEMS):
            batch = todo[start : start + BATCH_ITEMS]
            _import_batch(cache, manifest, _mask_source(masks_dir, volumes), batch)
            bar.update(len(batch))
    return summarize(cache, len(todo), started, "import")


MaskSource = Callable[[int, pd.Series], "np.ndarray | str"]


def _mask_source(masks_dir: Path | None, volumes: CorpusLabels | None) -> MaskSource:
    """(index, manifest row) -> the item's uint8 0/1 mask at its size, or why it has none."""

    def from_files(index: int, row: pd.Series) -> np.ndarray | str:
        path = masks_dir / f"{row['item_id']}.png"
        if not path.is_file():
            return f"no mask file {path.name}"
        try:
            return read_mask_file(path, (int(row["height"]), int(row["width"])))
        except ValueError as e:
            return str(e)

    def from_volumes(index: int, row: pd.Series) -> np.ndarray | str:
        mask = volumes.mask(index)
        return f"no label volume covers {row['path']}" if mask is None else (mask != 0).astype(np.uint8)

    return from_files if volumes is None else from_volumes


def _import_batch(cache: RoiCache, manifest: pd.DataFrame, mask_of: MaskSource, indices: np.ndarray) -> None:
    done, masks, boxes, rects, flags, failed, reasons = [], [], [], [], [], [], []
    for index in indices:
        row = manifest.iloc[int(index)]
        mask_hw = mask_of(int(index), row)
        if isinstance(mask_hw, str):
            failed.append(int(index))
            reasons.append(mask_hw)
            continue
        rects_k4 = expanded_rects(mask_hw)
        if len(rects_k4) > cache.max_rects:
            failed.append(int(index))
            reasons.append(f"{row['item_id']}: {len(rects_k4)} separate regions, the cache holds {cache.max_rects}")
            continue
        boxes_k4 = prompt_boxes(mask_hw)
        areas = (boxes_k4[:, 2] - boxes_k4[:, 0]) * (boxes_k4[:, 3] - boxes_k4[:, 1])
        done.append(int(index))
        masks.append(mask_hw)
        boxes.append(boxes_k4[np.argsort(-areas, kind="stable")[: cache.max_boxes]])
        rects.append(rects_k4)
        flags.append(0 if mask_hw.any() else FLAG_EMPTY_ROI)
    if failed:
        cache.write_failed(failed, reasons)
    if done:
        cache.write(done, masks, [m * 255 for m in masks], boxes, [1.0] * len(done), flags, rects)


# ------------------------------------------------------------------------------------------ shuffled control
def derangement_within(groups: Sequence[Any], rng: np.random.Generator) -> np.ndarray:
    """donor[i] != i with groups[donor[i]] == groups[i], uniformly over cyclic permutations of each group
    (Sattolo's algorithm); -1 for an item alone in its group (it has no other item to take from)."""
    groups = np.asarray(groups)
    donor = np.full(len(groups), -1, dtype=np.int64)
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        if len(members) < 2:
            continue
        cycle = rng.permutation(members)
        donor[cycle] = np.roll(cycle, -1)  # each item takes from the next one on a random cycle
    return donor


def shuffle_rois(
    source_path: str | Path, cache_path: str | Path, *, seed: int = 0, progress: bool = True
) -> RunSummary:
    """A cache whose item i holds the ROI (mask, saliency, boxes, score, flags) of another done item of the
    same modality in the source cache; items not done in the source are failed here too, so both caches
    train on the same items."""
    started = time.perf_counter()
    source = RoiCache.open(source_path)
    provenance = {
        "source": "shuffled",
        "from": source.provenance,
        "seed": int(seed),
        "untrained": bool(source.provenance.get("untrained", False)),
    }
    cache_path = Path(cache_path)
    if cache_path.exists():
        cache = RoiCache.open(cache_path, mode="r+", provenance=provenance)
    else:
        cache = RoiCache.create(
            cache_path,
            source.manifest(),
            provenance,
            geometry=source.geometry,
            info={"shuffled_from": portable_path(source_path)},  # no absolute path in a cache
        )
    table = source.table()
    done_items = np.flatnonzero(source.status() == DONE)
    local = derangement_within(table["modality"].to_numpy()[done_items], np.random.default_rng(seed))
    donor = np.full(len(table), -1, dtype=np.int64)
    donor[done_items] = np.where(local >= 0, done_items[np.maximum(local, 0)], -1)
    todo = cache.pending()
    sizes = table[["height", "width"]].to_numpy()
    with tqdm(total=len(todo), unit="img", desc="shuffle", disable=not progress) as bar:
        for start in range(0, len(todo), BATCH_ITEMS):
            batch = todo[start : start + BATCH_ITEMS]
            _shuffle_batch(source, cache, table, donor, sizes, batch)
            bar.update(len(batch))
    return summarize(cache, len(todo), started, "import")


def _shuffle_batch(
    source: RoiCache, cache: RoiCache, table: pd.DataFrame, donor: np.ndarray, sizes: np.ndarray, indices: np.ndarray
) -> None:
    done, masks, saliency, boxes, rects, scores, flags, failed, reasons = [], [], [], [], [], [], [], [], []
    for index in map(int, indices):
        j = int(donor[index])
        if j < 0:
            failed.append(index)
            status = table["status"].iloc[index]
            reasons.append(
                f"not done in the source cache ({status})"
                if status != "done"
                else f"no other done item of modality {table['modality'].iloc[index]} to take a ROI from"
            )
            continue
        h, w = (int(v) for v in sizes[index])
        hj, wj = (int(v) for v in sizes[j])
        done.append(index)
        # the stored S x S arrays are aspect-free: copying them as they are adds no resampling
        masks.append(source.read_mask(j, (source.mask_size, source.mask_size)))
        saliency.append(source.read_saliency(j, (source.mask_size, source.mask_size)))
        scale = np.array([w / wj, h / hj, w / wj, h / hj])
        boxes.append(source.read_boxes(j) * scale.astype(np.float32))
        rects.append(source.read_rects(j) * scale)  # the donor's rectangles, in proportion (not re-derived)
        scores.append(float(table["score"].iloc[j]))
        flags.append(FLAG_EMPTY_ROI if table["empty_roi"].iloc[j] else 0)
    if failed:
        cache.write_failed(failed, reasons)
    if done:
        cache.write(done, masks, saliency, boxes, scores, flags, rects)


# ------------------------------------------------------------------------------------------ command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m localize import", description=__doc__.split("\n\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--masks", type=Path, help="folder of <item_id>.png ROI masks (any non-zero colour = ROI)")
    what.add_argument(
        "--label-volumes",
        type=Path,
        metavar="LIST.csv",
        help="CSV (label, images) of NIfTI label volumes / DICOM SEG objects, matched to the images by geometry",
    )
    what.add_argument(
        "--shuffle-from",
        type=Path,
        metavar="CACHE",
        help="make a shuffled-ROI control from this cache (item i gets another item's ROI)",
    )
    parser.add_argument("--cache", type=Path, required=True, help="ROI cache to create or resume (CACHE.zarr)")
    parser.add_argument("--corpus", type=Path, help="corpus root to scan (with --masks, for a new cache)")
    parser.add_argument("--manifest", type=Path, help="manifest to use instead of scanning (with --masks)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffled derangement (default 0)")
    default = CacheGeometry()
    parser.add_argument("--mask-size", type=int, default=default.mask_size, help="stored mask size S")
    parser.add_argument("--max-boxes", type=int, default=default.max_boxes, help="boxes kept per item")
    parser.add_argument("--max-rects", type=int, default=default.max_rects, help="expanded-ROI rectangles per item")
    parser.add_argument("--retry-failed", action="store_true", help="also redo items recorded as failed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.shuffle_from is not None:
            if args.corpus or args.manifest:
                raise ValueError("--shuffle-from takes its items from the source cache: drop --corpus / --manifest")
            summary = shuffle_rois(args.shuffle_from, args.cache, seed=args.seed, progress=not args.no_progress)
        else:
            summary = import_masks(
                args.masks,
                args.cache,
                label_volumes=args.label_volumes,
                corpus=args.corpus,
                manifest_path=args.manifest,
                geometry=CacheGeometry(args.mask_size, args.max_boxes, args.max_rects),
                retry_failed=args.retry_failed,
                progress=not args.no_progress,
            )
    except (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
