"""ROI-cache I/O benchmark: batched writes and random-access mask reads resized to 224x224.

Prints one JSON object. `reads_per_s` goes through RoiCache.read_mask (the pretraining path);
`zarr_reads_per_s` reads the same items through plain zarr indexing, measured in the same run, as the
baseline the fast shard reader is compared against.

    python bench/cache_io.py [--items 10000] [--mask-size 256] [--reads 20000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import zarr

from data.ids import make_item_id
from data.roi_cache import RoiCache


def synthetic_results(n: int, size: int, rng: np.random.Generator) -> tuple[list, list, list, list]:
    """Blob-shaped masks and smooth saliency at a typical image size (what localize writes)."""
    masks, saliency, boxes, scores = [], [], [], []
    yy, xx = np.mgrid[:size, :size]
    for _ in range(n):
        cy, cx, r = rng.uniform(0.3, 0.7, 2).tolist() + [rng.uniform(0.05, 0.3)]
        d2 = (yy / size - cy) ** 2 + (xx / size - cx) ** 2
        masks.append((d2 < r**2).astype(np.uint8))
        saliency.append(np.exp(-d2 / (2 * r**2)).astype(np.float32))
        boxes.append(np.array([[(cx - r) * size, (cy - r) * size, (cx + r) * size, (cy + r) * size]], np.float32))
        scores.append(float(rng.random()))
    return masks, saliency, boxes, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--mask-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=512, help="original image size of the synthetic items")
    parser.add_argument("--batch", type=int, default=64, help="items per write call (a localize batch)")
    parser.add_argument("--reads", type=int, default=20_000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n, size = args.items, args.image_size
    paths = [f"bench/img_{i:07d}.png" for i in range(n)]
    manifest = pd.DataFrame(
        {
            "item_id": [make_item_id(p, 0) for p in paths],
            "path": paths,
            "frame": 0,
            "modality": "CT",
            "height": size,
            "width": size,
        }
    )
    template = synthetic_results(args.batch, size, rng)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.zarr"
        cache = RoiCache.create(path, manifest, {"bench": True}, mask_size=args.mask_size)
        t0 = time.perf_counter()
        for start in range(0, n, args.batch):
            idx = range(start, min(start + args.batch, n))
            cache.write(idx, *(part[: len(idx)] for part in template))
        write_s = time.perf_counter() - t0
        store_mb = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20
        n_files = sum(1 for p in path.rglob("*") if p.is_file())

        reader = RoiCache.open(path)
        order = rng.integers(0, n, args.reads)
        t0 = time.perf_counter()
        for i in order:
            reader.read_mask(int(i), (224, 224))
        read_s = time.perf_counter() - t0

        plain = zarr.open_group(path, mode="r")["mask"]
        n_plain = min(args.reads, 2_000)
        t0 = time.perf_counter()
        for i in order[:n_plain]:
            cv2.resize(plain[int(i)], (224, 224), interpolation=cv2.INTER_NEAREST_EXACT)
        plain_s = time.perf_counter() - t0
        # Untimed: the fast path must read what zarr reads.
        checked = order[: min(len(order), 200)]
        reads_equal = all(
            np.array_equal(
                reader.read_mask(int(i), (224, 224)),
                cv2.resize(plain[int(i)], (224, 224), interpolation=cv2.INTER_NEAREST_EXACT),
            )
            for i in checked
        )

    print(
        json.dumps(
            {
                "items": n,
                "mask_size": args.mask_size,
                "write_batch": args.batch,
                "writes_per_s": round(n / write_s, 1),
                "reads_per_s": round(args.reads / read_s, 1),
                "zarr_reads_per_s": round(n_plain / plain_s, 1),
                "read_speedup_vs_zarr": round((args.reads / read_s) / (n_plain / plain_s), 2),
                "reads_equal_zarr": reads_equal,
                "reads_compared": len(checked),
                "store_mb": round(store_mb, 2),
                "store_files": n_files,
            }
        )
    )


if __name__ == "__main__":
    main()
