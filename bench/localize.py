"""Localization throughput: the batched `Localizer` against the authors' one-image/one-prompt loop.

    python bench/localize.py --size tiny|real [--sam vit_b|vit_l|vit_h] [--method m2ib|similarity]
                             [--preset release|fast] [--images N]
                             [--batch-size B] [--steps 10] [--device auto|cpu|cuda] [--repeats 3] [--threads T]
                             [--precision fp32|bf16] [--bf16-on-cpu] [--no-warmup] [--no-stages]

Prints ONE JSON object. All paths use the same loaded models (through the project's loaders, from checkpoints this
script writes to a temporary folder), the same images and the same text embeddings (encoded once), in the same run:

  batched    `Localizer(images, modalities)` on batches of B with the chosen M2IB preset (`--preset`, default the
             release's) and precision: one CLIP preprocessing of the batch, saliency on images x prompts per
             modality in one call (M2IB runs the blocks before its layer once per image), the SAM image encoder on
             the stacked batch, all boxes of an image decoded at once.
  naive      the authors' loop, whatever `--preset` says: per image, per prompt, the release's M2IB on ONE image x
             ONE prompt, running the WHOLE vision tower at every optimisation step with 10 noise copies (their
             IBAInterpreter; here `reuse_prefix=False`, which gives the same maps); union over the prompts; the
             release's refinement steps; segment_anything's `SamPredictor` with all boxes of the image in one
             `predict_torch` call, single-mask output (MedCLIP-SAMv2 `prompt_sam.py`). Where the authors' loop does
             more work than this, the baseline is left faster (conservative): their IBAInterpreter also re-encodes
             the prompt at every step, while here it is encoded once. SamPredictor gets the image through
             `set_torch_image` from the same resize the batched path uses (`set_image` would resize a uint8 copy
             with PIL instead: same cost, slightly different pixels). fp32 throughout, as the release.
  unbatched  our loop (the chosen preset, prefix reuse) one image x one prompt at a time: `speedup_from_batching`
             = unbatched / batched is what batching alone buys; `speedup_from_m2ib_loop` = naive / unbatched what
             our M2IB loop buys (prefix reuse; with `--preset fast` also its lighter work: then the maps differ
             from the baseline's and `mask_agreement` says by how much).

Precision: `bf16_*` keys compare the batched path in fp32 and in bf16 autocast on the same images (ROI pixels that
differ, time; `bf16_other_precision_images_per_s`: one pass at the other precision). On CUDA this always runs; on
the CPU only with `--bf16-on-cpu` (CPU autocast works, but a run refuses bf16 off the GPU), else the keys are null
and `bf16_skipped` says why.

`--size tiny`: the untrained stand-ins (`localize.standins.write_standins`), sample-corpus images of 96 px.
`--size real`: BiomedCLIP ViT-B/16 + BERT-base and SAM vit_b architectures (`--sam vit_h`: SAM's largest) with
random weights (bench/_models.py; timing needs no trained weights), sample-corpus images of 512 px - a GPU job (SAM
vit_b takes minutes per image on 2 CPU cores; a CPU smoke run: `--images 2 --batch-size 2 --repeats 1 --no-warmup
--no-stages`).

Timing: images are loaded beforehand; warm-up calls are excluded; on CUDA the measured regions are bracketed by
`torch.cuda.synchronize()`. Each of `--repeats` rounds times the three paths over all images, alternating batch by
batch so that all see the same machine load; the medians over rounds are reported (`speedup_rounds`: each round's
ratio). On a CPU shared with other jobs use `--threads 1`: several processes spinning 2 threads each on 2 cores
slow small ops by 10x and more, and the ratio with them. `mask_agreement` (mean IoU of the batched and naive
ROIs, an image empty in both counting as 1.0), `rects_identical`, `saliency_mae` and `unbatched_mask_agreement`
show whether the paths do the same work. Stage timings of the batched path (`saliency_s`, `sam_s` =
`refine_batch`: components + SAM) come from one extra pass with a synchronisation around each stage.
"""
# ruff: noqa: E402  (the sys.path fix below must run before the project imports)

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder is sys.path[0] and its name would shadow the `localize` package.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import csv
import json
import math
import statistics
import tempfile
from typing import Any

import numpy as np
import torch

from bench._localize_paths import (
    NaiveLocalizer,
    StopWatch,
    agreement,
    batches,
    measure_round,
    roi_disagreement,
    stage_times,
)
from data.readers import load_image
from data.sample import write_sample_corpus
from localize.config import LocalizeConfig
from localize.localizer import Localizer
from localize.precision import PRECISIONS
from localize.saliency import M2IB_PRESETS
from localize.standins import write_standins

IMAGE_PX = {"tiny": 96, "real": 512}
DEFAULT_IMAGES = {"tiny": 24, "real": 64}
DEFAULT_BATCH = {"tiny": 8, "real": 16}


# --- inputs -------------------------------------------------------------------------------------------------------


def write_config(
    size: str, method: str, preset: str, steps: int, folder: Path, sam_arch: str = "vit_b"
) -> LocalizeConfig:
    """Checkpoints for `size` written under `folder` (real size: SAM `sam_arch`), as a LocalizeConfig using
    `method` (m2ib: `preset`)."""
    saliency = {"method": "similarity"} if method == "similarity" else None
    if size == "tiny":
        path = write_standins(folder / "standins")
        overrides = [f"saliency.steps={steps}", f"saliency.preset={preset}"]
        return LocalizeConfig.load(path, overrides if saliency is None else [f"saliency={json.dumps(saliency)}"])
    from bench._models import write_real_size_models  # the real-size writer is only needed here

    clip_spec, sam_spec = write_real_size_models(folder / "real", sam_arch=sam_arch)
    saliency = saliency or {"method": "m2ib", "preset": preset, "steps": steps}  # the release's layer 7 of 12
    return LocalizeConfig.load(
        None,
        [
            f"clip={json.dumps(clip_spec)}",
            f"sam={json.dumps(sam_spec)}",
            f"saliency={json.dumps(saliency)}",
            "untrained=true",
        ],
    )


def sample_images(n: int, image_px: int, folder: Path) -> tuple[list[np.ndarray], list[str]]:
    """`n` images of the sample corpus (brain MR, chest CT, chest X-ray), modalities interleaved so that every batch
    holds a mix, as model-ready float32 arrays in [0, 1]."""
    root = folder / "corpus"
    write_sample_corpus(root, n=max(3, math.ceil(n / 3)), size=image_px)
    with (root / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    by_modality: dict[str, list[dict]] = {}
    for row in rows:
        by_modality.setdefault(row["modality"], []).append(row)
    interleaved = [r for group in zip(*by_modality.values(), strict=False) for r in group][:n]
    images = [load_image(root, r["path"], int(r["frame"]), r["modality"]) for r in interleaved]
    return images, [r["modality"] for r in interleaved]


# --- measurement ----------------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return torch.device(name)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "real"), default="tiny")
    parser.add_argument("--sam", choices=("vit_b", "vit_l", "vit_h"), default=None, help="real size: SAM (vit_b)")
    parser.add_argument("--method", choices=("m2ib", "similarity"), default="m2ib")
    parser.add_argument("--preset", choices=sorted(M2IB_PRESETS), default="release", help="M2IB preset (batched)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="batched path's precision")
    parser.add_argument(
        "--bf16-on-cpu", action="store_true", help="allow bf16 autocast on the CPU (the fp32/bf16 comparison)"
    )
    parser.add_argument("--images", type=int, default=None, help="images per pass (default 24 tiny / 64 real)")
    parser.add_argument("--batch-size", type=int, default=None, help="batched path's batch (default 8 / 16)")
    parser.add_argument("--steps", type=int, default=10, help="M2IB optimisation steps")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds; medians are reported")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's own); on a shared machine 1 avoids thread thrashing",
    )
    parser.add_argument(
        "--warmup",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="untimed warm-up (one batch, one image per modality) before the rounds",
    )
    parser.add_argument(
        "--stages",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="an extra batched pass for saliency_s / sam_s",
    )
    args = parser.parse_args(argv)
    if args.size == "tiny" and args.sam is not None:
        parser.error("--sam chooses the real-size SAM; --size tiny uses the stand-in SAM")
    if args.precision == "bf16" and resolve_device(args.device).type != "cuda" and not args.bf16_on_cpu:
        parser.error("--precision bf16 on the CPU needs --bf16-on-cpu (a localization run refuses it)")
    args.images = DEFAULT_IMAGES[args.size] if args.images is None else args.images
    args.batch_size = DEFAULT_BATCH[args.size] if args.batch_size is None else args.batch_size
    if min(args.images, args.batch_size, args.repeats, args.steps, 1 if args.threads is None else args.threads) < 1:
        parser.error("--images, --batch-size, --repeats, --steps and --threads must be >= 1")
    return args


def with_precision(localizer: Localizer, precision: str) -> Localizer:
    """The same models and settings at another precision (built directly: no refusal of bf16 on the CPU)."""
    loc = localizer
    return Localizer(loc.clip, loc.sam, loc.saliency, loc.refine, loc.prompts, loc.device, precision)


def precision_comparison(
    localizer: Localizer, items: list, images: list, modalities: list, batch_size: int, watch: StopWatch, allowed: bool
) -> dict[str, Any]:
    """`bf16_*`: the batched path at the other precision on the same images: ROI pixels that differ, and time."""
    if not allowed:
        return {
            "bf16_skipped": "CPU run: bf16 autocast is a GPU option (pass --bf16-on-cpu to compare with CPU autocast)",
            "bf16_roi_pixels_differing": None,
            "bf16_roi_pixel_disagreement": None,
            "bf16_other_precision_images_per_s": None,
        }
    other = with_precision(localizer, "bf16" if localizer.precision == "fp32" else "fp32")
    t0, other_items = watch.now(), []
    for part in batches(len(images), batch_size):
        other_items += other(images[part], modalities[part])
    other_s = watch.now() - t0
    fp32, bf16 = (items, other_items) if localizer.precision == "fp32" else (other_items, items)
    return {
        "bf16_skipped": None,
        **{f"bf16_{key}": value for key, value in roi_disagreement(fp32, bf16).items()},
        "bf16_other_precision_s": other_s,
        "bf16_other_precision_images_per_s": len(images) / other_s,
        "bf16_saliency_mae": float(
            np.mean([np.abs(a.saliency_hw - b.saliency_hw).mean() for a, b in zip(fp32, bf16, strict=True)])
        ),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    watch = StopWatch(device)
    with tempfile.TemporaryDirectory(prefix="bench-localize-") as tmp:
        config = write_config(args.size, args.method, args.preset, args.steps, Path(tmp), args.sam or "vit_b")
        localizer = with_precision(Localizer.from_config(config, device), args.precision)
        images, modalities = sample_images(args.images, IMAGE_PX[args.size], Path(tmp))
    naive, unbatched = NaiveLocalizer(localizer), NaiveLocalizer(localizer, authors=False)

    if args.warmup:
        first = batches(len(images), args.batch_size)[0]
        localizer(images[first], modalities[first])
        for modality in dict.fromkeys(modalities):
            i = modalities.index(modality)
            naive(images[i], modality)
            unbatched(images[i], modality)
    rounds = [
        measure_round(localizer, naive, unbatched, images, modalities, args.batch_size, watch)
        for _ in range(args.repeats)
    ]
    batched_s = statistics.median(r.batched_s for r in rounds)
    naive_s = statistics.median(r.naive_s for r in rounds)
    unbatched_s = statistics.median(r.unbatched_s for r in rounds)
    last = rounds[-1]

    cuda = device.type == "cuda"
    result: dict[str, Any] = {
        "size": args.size,
        "sam": "tiny stand-in" if args.size == "tiny" else args.sam or "vit_b",
        "method": args.method,
        "preset": config.saliency.get("preset") if args.method == "m2ib" else None,
        "batched_saliency": localizer.saliency.provenance(),
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu, threads={torch.get_num_threads()}",
        "n_images": len(images),
        "batch_size": args.batch_size,
        "steps": args.steps if args.method == "m2ib" else None,
        "repeats": args.repeats,
        "batched_images_per_s": len(images) / batched_s,
        "naive_images_per_s": len(images) / naive_s,
        "speedup_vs_naive": naive_s / batched_s,
        # Our loop (the chosen preset, prefix reuse) one image x one prompt at a time: what batching alone buys,
        # and what our M2IB loop buys over the authors' (prefix reuse; with the fast preset also less work).
        "unbatched_images_per_s": len(images) / unbatched_s,
        "speedup_from_batching": unbatched_s / batched_s,
        "speedup_from_m2ib_loop": naive_s / unbatched_s,
        "naive_saliency": naive.saliency.provenance(),
        "naive_whole_tower_per_step": getattr(naive.saliency, "reuse_prefix", None) is False,
        "batched_precision": localizer.precision,
        "naive_precision": "fp32",
        "batched_s": batched_s,
        "naive_s": naive_s,
        "batched_s_rounds": [r.batched_s for r in rounds],
        "naive_s_rounds": [r.naive_s for r in rounds],
        "unbatched_s_rounds": [r.unbatched_s for r in rounds],
        "speedup_rounds": [r.naive_s / r.batched_s for r in rounds],
        "naive_saliency_s": sum(n.saliency_s for n in last.naive),
        "naive_sam_s": sum(n.sam_s for n in last.naive),
        **agreement(last.batched, last.naive),
        "unbatched_mask_agreement": agreement(last.batched, last.unbatched)["mask_agreement"],
        "nonempty_roi_share": float(np.mean([not item.empty for item in last.batched])),
        "boxes_per_image": float(np.mean([len(item.boxes_k4) for item in last.batched])),
        "image_sizes": sorted({f"{im.shape[0]}x{im.shape[1]}" for im in images}),
        "modalities": {m: modalities.count(m) for m in dict.fromkeys(modalities)},
        "prompts_per_image": float(np.mean([len(localizer.prompts.for_modality(m).prompts) for m in modalities])),
        "untrained": True,
        "torch": torch.__version__,
    }
    allowed = cuda or args.bf16_on_cpu
    result.update(precision_comparison(localizer, last.batched, images, modalities, args.batch_size, watch, allowed))
    if args.stages:
        result.update(stage_times(localizer, images, modalities, args.batch_size, watch))
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
