"""Pretraining loader from files vs from a packed store, packing cost, and localize reading before/after volume-aware
reads. Prints one JSON object.

Corpora (written once under --work, reused while their sizes do not change):
  nifti_gz   --volumes gzipped NIfTI CT volumes of --side x --side x --slices (int16)
  dicom_rle  --dicom-files multi-frame CT DICOM files of --dicom-frames frames, RLE Lossless
  sample     the sample corpus (`python -m data sample`, --sample-n items per modality)

Per corpus: `raw_images_per_s` and `packed_images_per_s` are the images/s of the pretraining DataLoader
(`pretrain.datamodule.RoiDataModule`: resize to 224 + flip, the expanded ROI, 2 workers, batches of --batch) reading
the files or the packed store, measured in the same run for --seconds each after the first batch; `packed_speedup`
is their ratio; `*_cpu_ms_per_image` the CPU time the loader's processes (2 workers + the main one) spent per
image, a figure a shared machine's load hardly changes, and `packed_images_per_s_on_2_free_cores` = 2000 / it,
what two idle cores would deliver; `packing_s` the time `pack_corpus` took (2 processes), `bytes_per_image` the
store's size on disk per image; `packed_max_abs_diff` the largest pixel difference of one batch read both ways
(<= 0.5/255). `packed_square_*`: the same figures from a square store (`data pack --square 224`: images stored at the
input size, so the loader skips the image resize), `packed_square_speedup` its images/s over the raw loader's,
`packed_square_max_abs_diff` / `square_rois_equal` its first batch against the raw one. A square uint8 store's images
leave the loader as uint8 (`packed_square_image_dtype`) and become float on the device
(`RoiDataModule.on_after_batch_transfer`); the differences are taken after that conversion.
`packed_square_2_5d_*`: the square store read with 2.5-D input (`input_channels: 2.5d`, slices z-1, z, z+1 of the
series as the channels: three images read per item), measured in the same run; `square_2_5d_vs_2d` is its images/s over
the 2-D square loader's and `square_2_5d_cpu_vs_2d` its CPU time per image over the 2-D one's.

`localize` (nifti_gz, the tiny stand-ins with similarity saliency so that reading dominates): items/s reading item by
item (`volume_cache_mb: 0`, as before volume-aware reads), volume-aware, and on the same slices stored as PNG files;
`aware_time_vs_png` = volume-aware time / PNG time (target <= 2); `caches_equal`: the two nifti_gz caches match.

    python bench/loader.py [--small] [--work DIR] [--volumes 3] [--side 512] [--slices 96] [--seconds 20]
"""
# ruff: noqa: E402  (the sys.path fix below must run before the project imports)

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder is sys.path[0] and bench/localize.py would shadow the `localize` package.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import gc
import json
import os
import shutil
import time

import numpy as np
import torch

from bench._volumes import dicom_corpus, nifti_corpus, png_corpus, sample_corpus
from data.intensity import IntensityConfig
from data.manifest import scan_corpus
from data.packed_store import PackedStore
from data.packing import pack_corpus
from data.roi_cache import RoiCache


def roi_cache(corpus: Path, path: Path) -> RoiCache:
    """A cache of the corpus with one rectangle ROI per item (the pretraining loader reads its rectangles)."""
    shutil.rmtree(path, ignore_errors=True)
    manifest, failures = scan_corpus(corpus, workers=2, progress=False)
    if len(failures):
        raise RuntimeError(f"{corpus}: {len(failures)} files failed the scan: {failures.head(3)}")
    cache = RoiCache.create(path, manifest, {"bench": "loader", "intensity": {}}, shard_items=64)
    rng = np.random.default_rng(0)
    for shard in cache.shards():
        masks = []
        for h, w in manifest.loc[shard.start : shard.stop - 1, ["height", "width"]].to_numpy():
            mask = np.zeros((h, w), np.uint8)
            y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
            mask[y : y + h // 3, x : x + w // 3] = 1
            masks.append(mask)
        cache.write(list(shard), masks, masks, [np.zeros((0, 4))] * len(masks), [1.0] * len(masks))
    return cache


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of this process and of `pids` (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = sum(os.times()[:2])
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def loader_rate(
    corpus: Path, cache: Path, packed: Path | None, batch: int, seconds: float, input_channels: str = "2d"
) -> tuple[float, float, dict]:
    """(images/s of the pretraining DataLoader for `seconds` after its first batch, CPU ms per image of the loader's
    processes in that time, the first batch)."""
    from pretrain.datamodule import RoiDataModule

    dm = RoiDataModule(
        corpus,
        cache,
        packed=packed,
        input_size=224,
        batch_size=batch,
        num_workers=2,
        normalize="imagenet",
        input_channels=input_channels,
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    first, n_images, t0, cpu0, pids = None, 0, None, 0.0, []
    while t0 is None or time.perf_counter() - t0 < seconds:
        iterator = iter(loader)  # persistent workers: the same processes every pass
        pids = [w.pid for w in iterator._workers]
        for items in iterator:
            if first is None:  # pays for the workers' start-up
                first, t0, cpu0 = items, time.perf_counter(), cpu_seconds(pids)
                continue
            n_images += items["image"].shape[0]
            if time.perf_counter() - t0 >= seconds:
                break
    wall, cpu = time.perf_counter() - t0, cpu_seconds(pids) - cpu0
    first["image_dtype"] = str(first["image"].dtype).removeprefix("torch.")
    first = dm.on_after_batch_transfer(first, 0)  # what the training step receives: float in [0, 1]
    del iterator, loader
    gc.collect()  # its persistent workers stop now, not inside the next packing job's forked processes
    return n_images / wall, 1e3 * cpu / n_images, first


def corpus_figures(name: str, corpus: Path, work: Path, args: argparse.Namespace) -> dict:
    cache = roi_cache(corpus, work / f"{name}_cache.zarr")
    store_path = work / f"{name}_packed.zarr"
    shutil.rmtree(store_path, ignore_errors=True)
    started = time.perf_counter()
    store = PackedStore.create(store_path, cache.manifest(), IntensityConfig(), shard_items=cache.shard_items)
    summary = pack_corpus(store, corpus, workers=2, progress=False)
    packing_s = time.perf_counter() - started
    square_path = work / f"{name}_packed_square.zarr"
    shutil.rmtree(square_path, ignore_errors=True)
    square_store = PackedStore.create(
        square_path, cache.manifest(), IntensityConfig(), square=224, shard_items=cache.shard_items
    )
    pack_corpus(square_store, corpus, workers=2, progress=False)
    raw, raw_cpu, raw_batch = loader_rate(corpus, cache.path, None, args.batch, args.seconds)
    packed, packed_cpu, packed_batch = loader_rate(corpus, cache.path, store_path, args.batch, args.seconds)
    square, square_cpu, square_batch = loader_rate(corpus, cache.path, square_path, args.batch, args.seconds)
    square_25d, square_25d_cpu, square_25d_batch = loader_rate(
        corpus, cache.path, square_path, args.batch, args.seconds, "2.5d"
    )
    # the same seeded order and augmentation
    assert raw_batch["item_id"] == packed_batch["item_id"] == square_batch["item_id"] == square_25d_batch["item_id"]
    return {
        "items": cache.n_items,
        "raw_images_per_s": round(raw, 1),
        "packed_images_per_s": round(packed, 1),
        "packed_speedup": round(packed / raw, 1),
        # load-independent: CPU time of the loader's 3 processes per image, and what 2 free cores would deliver
        "raw_cpu_ms_per_image": round(raw_cpu, 2),
        "packed_cpu_ms_per_image": round(packed_cpu, 2),
        "packed_images_per_s_on_2_free_cores": round(2000 / packed_cpu, 1),
        "packed_square_images_per_s": round(square, 1),
        "packed_square_speedup": round(square / raw, 1),
        "packed_square_cpu_ms_per_image": round(square_cpu, 2),
        "packed_square_images_per_s_on_2_free_cores": round(2000 / square_cpu, 1),
        "packed_square_2_5d_images_per_s": round(square_25d, 1),
        "packed_square_2_5d_cpu_ms_per_image": round(square_25d_cpu, 2),
        "square_2_5d_vs_2d": round(square_25d / square, 2),
        "square_2_5d_cpu_vs_2d": round(square_25d_cpu / square_cpu, 2),
        # the centre channel of 2.5-D input is the 2-D image: equal up to nothing (same store, same flip)
        "square_2_5d_centre_equal": bool(torch.equal(square_25d_batch["image"][:, 1], square_batch["image"][:, 1])),
        "packing_s": round(packing_s, 2),
        "packing_images_per_s": round(cache.n_items / packing_s, 1),
        "bytes_per_image": round(summary.bytes_per_image),
        "image_size_hw": [int(v) for v in cache.manifest()[["height", "width"]].iloc[0]],
        "packed_max_abs_diff": float((raw_batch["image"] - packed_batch["image"]).abs().max()),
        "rois_equal": bool(torch.equal(raw_batch["roi"], packed_batch["roi"])),
        "packed_square_max_abs_diff": float((raw_batch["image"] - square_batch["image"]).abs().max()),
        "packed_square_image_dtype": square_batch["image_dtype"],  # as the loader delivers them
        "square_rois_equal": bool(torch.equal(raw_batch["roi"], square_batch["roi"])),
    }


def localize_figures(nifti: Path, png: Path, work: Path, warmup: bool = True) -> dict:
    from localize.config import LocalizeConfig
    from localize.driver import run_localization
    from localize.standins import write_standins

    standins = write_standins(work / "standins")
    settings = ["saliency={method: similarity}", "batch_size=8", "geometry.shard_items=256"]
    if warmup:  # imports, the models' first calls
        run_localization(LocalizeConfig.load(standins, settings), png, work / "warmup.zarr", workers=0, progress=False)
        shutil.rmtree(work / "warmup.zarr")
    runs = {}
    for label, corpus, extra in (
        ("item_by_item", nifti, ["volume_cache_mb=0"]),
        ("volume_aware", nifti, []),
        ("png", png, []),
    ):
        cache = work / f"localize_{label}.zarr"
        shutil.rmtree(cache, ignore_errors=True)
        config = LocalizeConfig.load(standins, settings + extra)
        started = time.perf_counter()
        summary = run_localization(config, corpus, cache, workers=0, progress=False)
        runs[label] = (summary.items, time.perf_counter() - started, summary.reads)
    a = RoiCache.open(work / "localize_item_by_item.zarr")
    b = RoiCache.open(work / "localize_volume_aware.zarr")
    equal = all(np.array_equal(a._group[k][:], b._group[k][:], equal_nan=True) for k in ("mask", "rects", "score"))
    rate = {label: items / wall for label, (items, wall, _) in runs.items()}
    return {
        "items": runs["volume_aware"][0],
        "item_by_item_items_per_s": round(rate["item_by_item"], 2),
        "volume_aware_items_per_s": round(rate["volume_aware"], 2),
        "png_items_per_s": round(rate["png"], 2),
        "speedup_vs_item_by_item": round(rate["volume_aware"] / rate["item_by_item"], 1),
        "aware_time_vs_png": round(rate["png"] / rate["volume_aware"], 2),
        "volume_aware_reads": runs["volume_aware"][2].as_dict(),
        "caches_equal": bool(equal),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/mwm_bench_loader"), help="corpora and stores")
    parser.add_argument("--small", action="store_true", help="toy sizes, a few seconds (the test suite's run)")
    parser.add_argument("--volumes", type=int, default=3)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--slices", type=int, default=96)
    # as many frames as the NIfTI corpus has slices: with 96 (3 batches an epoch) the DataLoader, which restarts its
    # round robin at worker 0 every epoch, gave worker 0 two batches of three, and the figure measured that
    parser.add_argument("--dicom-files", type=int, default=3)
    parser.add_argument("--dicom-frames", type=int, default=96)
    parser.add_argument("--sample-n", type=int, default=64, help="sample corpus items per modality")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring time per loader")
    parser.add_argument("--no-localize", action="store_true")
    args = parser.parse_args()
    if args.small:
        args.volumes, args.side, args.slices, args.dicom_files, args.dicom_frames = 2, 64, 8, 1, 8
        args.sample_n, args.batch, args.seconds = 3, 4, 0.5
    torch.set_num_threads(1)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    nifti = nifti_corpus(work / "nifti_gz", args.volumes, args.side, args.slices)
    dicom = dicom_corpus(work / "dicom_rle", args.dicom_files, args.side, args.dicom_frames)
    sample = sample_corpus(work / "sample", args.sample_n)
    result = {
        "corpora": {
            name: corpus_figures(name, corpus, work, args)
            for name, corpus in (("nifti_gz", nifti), ("dicom_rle", dicom), ("sample", sample))
        }
    }
    if not args.no_localize:
        png = png_corpus(work / "png", args.volumes, args.side, args.slices)
        result["localize"] = localize_figures(nifti, png, work, warmup=not args.small)
    result["machine"] = {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
    result["config"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
