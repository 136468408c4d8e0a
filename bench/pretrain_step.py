"""One MWM pretraining step against one dense supervised step of the same timm backbone.

Prints one JSON object. The MWM step is differentiated mask sampling + SparkMIM forward + backward +
optimizer step; the baseline is `timm.create_model(backbone)` with a classification loss, same batch,
input size and optimizer, measured in the same run. The two are interleaved step by step after warm-up so
that load from other processes hits both alike; medians are reported.

    python bench/pretrain_step.py [--backbone resnet18] [--size 128] [--batch 16] [--steps 20] [--device auto]
    python bench/pretrain_step.py --backbone resnet50 --size 224 --batch 64 --optimizer lamb \
        --loader-corpus 8 --corpus-copies 16 --loader-workers 8          # the GPU run's settings (bench/gpu.py)

`step_ratio_vs_dense` = MWM step time / dense step time; `mask_share` = mask sampling time / MWM step time.
The data loader (with `--corpus DIR --cache CACHE.zarr`, or `--loader-corpus N`: a sample corpus of N items per
modality at `--corpus-px`, its files copied `--corpus-copies` times, with the corpus's truth masks as ROIs,
`bench/_corpus.py`) is a DataLoader over `data.dataset.RoiDataset` with the pretraining augmentation and ROI shape,
`--loader-workers` workers, pinned memory on CUDA, items drawn at random with replacement (no epoch ends):
`loader_images_per_s` is its throughput alone (GPU idle), measured before the steps; `fed_step_images_per_s` is the
MWM step fed by it, the training loop's pattern (workers decode the next batches while the GPU runs the current
step), and `fed_share_of_step` = fed / `step_images_per_s` (about 1: the loader keeps the GPU busy). Both time the
batches after 2 x workers warm-up batches (the prefetched queue drained).
`--breakdown` adds `breakdown_share`: forward + backward time of each part of the model (encoder, densify,
each decoder block, output head), each timed alone on its real inputs, as shares of their sum.
"""

# ruff: noqa: E402  (the sys.path fix below must run before the project imports)
from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder is sys.path[0]; the project root must come first for its packages.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import Callable

import timm
import torch
import torch.nn.functional as F
from timm.optim import Lamb
from torch.utils.data import DataLoader, RandomSampler

from pretrain.masking import DifferentiatedMasking
from pretrain.spark import SparkMIM


def synthetic_batch(batch: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fixed random images, one elliptic ROI per image (a few images with an empty ROI), random labels."""
    gen = torch.Generator().manual_seed(seed)
    img = torch.rand(batch, 3, size, size, generator=gen)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    centre = torch.rand(batch, 2, generator=gen) * 0.5 + 0.25
    radius = torch.rand(batch, 2, generator=gen) * 0.25 + 0.05
    inside = ((yy - centre[:, 0, None, None]) / radius[:, 0, None, None]) ** 2 + (
        (xx - centre[:, 1, None, None]) / radius[:, 1, None, None]
    ) ** 2 < 1
    inside[::8] = False  # empty ROIs occur in real caches
    labels = torch.randint(0, 10, (batch,), generator=gen)
    return img, inside[:, None].to(torch.uint8), labels


def make_loader(
    corpus: str, cache: str, size: int, batch: int, n_batches: int, workers: int, roi_shape: str, pin_memory: bool
) -> DataLoader:
    """The pretraining input pipeline (decode + ROI read + joint augmentation + collate) for `n_batches` batches."""
    from data.dataset import RoiDataset
    from pretrain.transforms import train_transform

    dataset = RoiDataset(corpus, cache=cache, transform=train_transform(size), roi_shape=roi_shape)
    if len(dataset) < batch:
        raise ValueError(f"{corpus}: {len(dataset)} cached items do not fill a batch of {batch}")
    sampler = RandomSampler(dataset, replacement=True, num_samples=n_batches * batch)  # no epoch ends
    return DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, pin_memory=pin_memory)


def timed_batches(loader: DataLoader, warmup: int, consume: Callable[[dict], None], sync: Callable[[], None]) -> float:
    """Images/s over the loader's batches after the first `warmup` (worker start-up, prefetched queue), each
    passed to `consume`."""
    n_images, t0 = 0, None
    for i, items in enumerate(loader):
        if i == warmup:
            sync()
            t0 = time.perf_counter()
        consume(items)
        if i >= warmup:
            n_images += items["image"].shape[0]
    sync()
    if t0 is None or n_images == 0:
        raise ValueError("the loader gave no batch after the warm-up")
    return n_images / (time.perf_counter() - t0)


def breakdown(mim: SparkMIM, img: torch.Tensor, active: torch.Tensor, repeats: int, sync) -> dict[str, float]:
    """Forward + backward seconds (median of `repeats`) of each part of `mim`, fed the activations it sees."""

    def timed(part: torch.nn.Module, *inputs) -> float:
        inputs = [[t.detach().requires_grad_() for t in x] if isinstance(x, list) else x for x in inputs]
        runs = []
        for _ in range(repeats + 1):  # the first run warms up
            sync()
            t0 = time.perf_counter()
            out = part(*inputs)
            outs = out if isinstance(out, list) else [out]
            torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
            sync()
            runs.append(time.perf_counter() - t0)
        return statistics.median(runs[1:])

    with torch.no_grad():
        feats = mim.encoder(img, active)[::-1]
        dense = mim.densify(feats, active)
    parts = {"encoder": timed(mim.encoder, img, active), "densify": timed(mim.densify, feats, active)}
    decoder = mim.decoder
    if not hasattr(decoder, "proj"):  # the pixel-shuffle option: one part
        parts["decoder"] = timed(decoder, dense)
        return parts
    x = dense[0]
    for i, block in enumerate(decoder.blocks):
        if 0 < i < len(dense):
            x = x + dense[i]
        parts[f"decoder.blocks.{i} ({x.shape[1]}ch {x.shape[2]}->{2 * x.shape[2]}px)"] = timed(block, x.detach())
        with torch.no_grad():
            x = block(x)
    parts["decoder.proj"] = timed(decoder.proj, x.detach())
    return parts


def make_optimizer(name: str, params) -> torch.optim.Optimizer:
    if name == "lamb":
        return Lamb(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.04)
    return torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.04)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each kind (after warm-up)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--decoder", choices=["spark", "pixel_shuffle"], default="spark")
    parser.add_argument("--decoder-width", type=int, default=768)
    parser.add_argument("--optimizer", choices=["adamw", "lamb"], default="adamw")
    parser.add_argument("--r-roi", type=float, default=0.8)
    parser.add_argument("--r-bg", type=float, default=0.4)
    parser.add_argument("--corpus", help="corpus folder: also measure the DataLoader (needs --cache)")
    parser.add_argument("--cache", help="ROI cache of the corpus (.zarr)")
    parser.add_argument("--loader-corpus", type=int, metavar="N", help="write a sample corpus of N items/modality")
    parser.add_argument("--corpus-px", type=int, default=512, help="--loader-corpus image size")
    parser.add_argument("--corpus-copies", type=int, default=1, help="--loader-corpus: copies of its files")
    parser.add_argument("--loader-workers", type=int, default=2)
    parser.add_argument("--roi-shape", choices=["rect", "sam"], default="rect", help="as data.roi_shape (rect)")
    parser.add_argument("--loader-batches", type=int, default=20, help="timed loader batches (alone and fed)")
    parser.add_argument("--breakdown", action="store_true", help="also time each part of the model alone")
    args = parser.parse_args()
    if bool(args.corpus) != bool(args.cache):
        parser.error("--corpus and --cache go together")
    if args.corpus and args.loader_corpus:
        parser.error("--corpus/--cache or --loader-corpus, not both")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    torch.manual_seed(0)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    with contextlib.ExitStack() as stack:
        corpus, cache = args.corpus, args.cache
        if args.loader_corpus:
            from bench._corpus import write_loader_corpus

            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-loader-")))
            corpus, cache = write_loader_corpus(tmp, args.loader_corpus, args.corpus_px, args.corpus_copies)
        result = measure(args, device, autocast, sync, corpus, cache)
    print(json.dumps(result))


def measure(args: argparse.Namespace, device: torch.device, autocast, sync, corpus, cache) -> dict:
    warm_batches, pin_memory = 2 * args.loader_workers + 1, device.type == "cuda"

    def loader() -> DataLoader:
        n, workers = warm_batches + args.loader_batches, args.loader_workers
        return make_loader(str(corpus), str(cache), args.size, args.batch, n, workers, args.roi_shape, pin_memory)

    loader_alone = timed_batches(loader(), warm_batches, lambda items: None, sync) if corpus else None

    mim = SparkMIM(args.backbone, args.size, decoder_width=args.decoder_width, decoder=args.decoder).to(device).train()
    dense = timm.create_model(args.backbone, num_classes=10).to(device).train()
    mim_opt, dense_opt = (
        make_optimizer(args.optimizer, mim.parameters()),
        make_optimizer(args.optimizer, dense.parameters()),
    )
    masking = DifferentiatedMasking(args.r_roi, args.r_bg)
    img, roi, labels = (t.to(device) for t in synthetic_batch(args.batch, args.size))
    grid_hw = mim.grid_hw((args.size, args.size))
    gen = torch.Generator(device=device).manual_seed(0)

    def mwm_step(img: torch.Tensor = img, roi: torch.Tensor = roi) -> tuple[float, float]:
        sync()
        t0 = time.perf_counter()
        active, _ = masking(roi, grid_hw, generator=gen)
        sync()
        t1 = time.perf_counter()
        with autocast:
            loss = mim(img, active)["loss"]
        loss.backward()
        mim_opt.step()
        mim_opt.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - t0, t1 - t0

    def dense_step() -> float:
        sync()
        t0 = time.perf_counter()
        with autocast:
            loss = F.cross_entropy(dense(img), labels)
        loss.backward()
        dense_opt.step()
        dense_opt.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - t0

    step_s, mask_s, dense_s = [], [], []
    for i in range(args.warmup + args.steps):
        # alternate the order so neither kind always runs right after the other
        order = (mwm_step, dense_step) if i % 2 == 0 else (dense_step, mwm_step)
        for fn in order:
            result = fn()
            if i < args.warmup:
                continue
            if fn is mwm_step:
                step_s.append(result[0])
                mask_s.append(result[1])
            else:
                dense_s.append(result)

    step, dense_step_s, mask = statistics.median(step_s), statistics.median(dense_s), statistics.median(mask_s)
    result = {
        "step_ratio_vs_dense": round(step / dense_step_s, 3),
        "mask_share": round(mask / step, 4),
        "step_images_per_s": round(args.batch / step, 2),
        "dense_images_per_s": round(args.batch / dense_step_s, 2),
        "step_s_median": round(step, 4),
        "dense_s_median": round(dense_step_s, 4),
        "mask_ms_median": round(mask * 1e3, 3),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({args.threads} threads)",
        "config": {
            "backbone": args.backbone,
            "size": args.size,
            "batch": args.batch,
            "steps": args.steps,
            "warmup": args.warmup,
            "decoder": args.decoder,
            "decoder_width": args.decoder_width,
            "optimizer": args.optimizer,
            "r_roi": args.r_roi,
            "r_bg": args.r_bg,
            "autocast": "bf16" if device.type == "cuda" else "fp32",
            "torch": torch.__version__,
            "timm": timm.__version__,
        },
    }
    if corpus:
        # The MWM step on the loader's batches: the workers prepare the next batches while the GPU computes.
        def fed(items: dict) -> None:
            image, roi = (items[k].as_subclass(torch.Tensor).to(device, non_blocking=True) for k in ("image", "roi"))
            mwm_step(image, roi)

        fed_loader = loader()
        fed_images_per_s = timed_batches(fed_loader, warm_batches, fed, sync)
        result["loader_images_per_s"] = round(loader_alone, 2)
        result["fed_step_images_per_s"] = round(fed_images_per_s, 2)
        result["fed_share_of_step"] = round(fed_images_per_s / (args.batch / step), 3)
        result["config"]["loader"] = {
            "items": len(fed_loader.dataset),
            "workers": args.loader_workers,
            "timed_batches": args.loader_batches,
            "warmup_batches": warm_batches,
            "roi_shape": args.roi_shape,
            "pin_memory": pin_memory,
            "corpus": "sample corpus" if args.loader_corpus else "given",
            "corpus_px": args.corpus_px if args.loader_corpus else None,
        }
    if args.breakdown:
        active, _ = masking(roi, grid_hw, generator=gen)
        with autocast:
            parts = breakdown(mim, img, active, repeats=3, sync=sync)
        total = sum(parts.values())
        result["breakdown_share"] = {name: round(t / total, 3) for name, t in parts.items()}
    return result


if __name__ == "__main__":
    main()
