"""A corpus + ROI cache for timing the pretraining data loader, written in seconds without a localizer.

``write_loader_corpus(root, per_modality, size, copies) -> (corpus, cache)``: the sample corpus (brain MR NIfTI
volumes, chest CT DICOM, chest X-ray PNG: the readers the loader really runs) at ``size`` px, its image folders
copied ``copies`` times (more items for the price of a file copy: writing a sample image costs far more), scanned
into a manifest, and an ROI cache in which each item's ROI is the corpus's truth mask (the organ or lesion a prompt
names; empty where the corpus has none). The ROIs' content does not matter for speed; their sizes are realistic.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import cv2
import numpy as np

from data.manifest import scan_corpus
from data.roi_cache import FLAG_EMPTY_ROI, RoiCache
from data.sample import write_sample_corpus
from data.sample.corpus import TRUTH_DIR


def write_loader_corpus(root: Path, per_modality: int, size: int, copies: int = 1) -> tuple[Path, Path]:
    """-> (corpus folder, ROI cache path) under `root`: 3 x per_modality x copies items, all marked done."""
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    corpus = Path(root) / "corpus"
    write_sample_corpus(corpus, n=per_modality, size=size)
    with (corpus / "labels.csv").open(newline="") as fh:
        item_of = {(row["path"], int(row["frame"])): row["item_id"] for row in csv.DictReader(fh)}
    folders = sorted({path.split("/")[0] for path, _ in item_of})
    for k in range(1, copies):
        for folder in folders:
            shutil.copytree(corpus / folder, corpus / f"copy_{k:03d}" / folder)

    manifest, failures = scan_corpus(corpus, workers=1, progress=False)
    if len(failures) or len(manifest) != len(item_of) * copies:
        raise RuntimeError(f"{corpus}: scanned {len(manifest)} items, expected {len(item_of) * copies}: {failures}")
    masks = []
    for row in manifest.itertuples():
        original = row.path.split("/", 1)[1] if row.path.startswith("copy_") else row.path
        truth = corpus / TRUTH_DIR / f"{item_of[(original, int(row.frame))]}.png"
        mask = cv2.imread(str(truth), cv2.IMREAD_GRAYSCALE) if truth.is_file() else None
        masks.append(np.zeros((row.height, row.width), np.uint8) if mask is None else (mask > 0).astype(np.uint8))
    cache_path = Path(root) / "roi_cache.zarr"
    cache = RoiCache.create(cache_path, manifest, {"localizer": "bench: the sample corpus's truth masks"})
    empty = [not m.any() for m in masks]
    cache.write(
        range(len(masks)),
        masks,
        [m.astype(np.float32) for m in masks],
        [np.zeros((0, 4), np.float32)] * len(masks),
        [1.0] * len(masks),
        flags=[FLAG_EMPTY_ROI if e else 0 for e in empty],
    )
    return corpus, cache_path
