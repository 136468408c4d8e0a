"""A tiny corpus + ROI cache for the Lightning pretraining tests (no localizer needed).

Images are smooth gradients with a bright disk; the ROI of an item is its disk (so a test can check that the
ROI moves with the image), except every fifth item, whose ROI is empty (flagged as such). The last item is
left pending in the cache.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from data.manifest import scan_corpus
from data.roi_cache import FLAG_EMPTY_ROI, RoiCache


def write_roi_corpus(root: Path, n: int = 16, seed: int = 0) -> tuple[Path, Path]:
    """-> (corpus dir, cache path) under `root`: n PNG images (64x64, every fourth 80x72), n - 1 done."""
    rng = np.random.default_rng(seed)
    corpus = root / "corpus"
    (corpus / "images").mkdir(parents=True)
    disks = {}
    for i in range(n):
        h, w = (64, 64) if i % 4 else (80, 72)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        a, b = rng.uniform(-0.2, 0.2, 2)
        cy, cx, r = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w, rng.uniform(7, 12)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img = 0.35 + a * yy / h + b * xx / w + 0.4 * disk  # no noise: masked patches are predictable
        relpath = f"images/img_{i:03d}.png"
        cv2.imwrite(str(corpus / relpath), (np.clip(img, 0, 1) * 255).astype(np.uint8))
        disks[relpath] = disk
    manifest, failures = scan_corpus(corpus, workers=1, progress=False)
    assert len(failures) == 0 and len(manifest) == n, failures
    cache_path = root / "roi_cache.zarr"
    cache = RoiCache.create(cache_path, manifest, {"localizer": "test fixture"}, mask_size=64, shard_items=8)
    done = list(range(n - 1))
    empty = [i % 5 == 0 for i in done]
    masks = [
        np.zeros_like(disks[manifest.path[i]]) if e else disks[manifest.path[i]]
        for i, e in zip(done, empty, strict=True)
    ]
    cache.write(
        done,
        [m.astype(np.uint8) for m in masks],
        [m.astype(np.float32) for m in masks],
        [np.zeros((0, 4), np.float32)] * len(done),
        [1.0] * len(done),
        flags=[FLAG_EMPTY_ROI if e else 0 for e in empty],
    )
    return corpus, cache_path
