"""Localization throughput: the batched `Localizer` against the authors' one-image/one-prompt/one-box loop.

    python bench/localize.py --size tiny|real [--method m2ib|similarity] [--images N] [--batch-size B]
                             [--steps 10] [--device auto|cpu|cuda] [--repeats 3] [--threads T]
                             [--no-warmup] [--no-stages]

Prints ONE JSON object. All paths use the same loaded models (through the project's loaders, from checkpoints this
script writes to a temporary folder), the same images and the same text embeddings (encoded once), in the same run:

  batched    `Localizer(images, modalities)` on batches of B: one CLIP preprocessing of the batch, saliency on
             images x prompts per modality in one call (M2IB runs the blocks before its layer once per image), the
             SAM image encoder on the stacked batch, all boxes of an image decoded at once; bf16 autocast on CUDA.
  naive      what the authors' scripts do: per image, per prompt, the saliency method on ONE image x ONE prompt -
             for M2IB their loop, which runs the WHOLE vision tower at every optimisation step (IBAInterpreter
             calls `get_image_features` per step; here `reuse_prefix=False`, which gives the same maps); union over
             the prompts; threshold + components (`saliency_components`); segment_anything's `SamPredictor` (one
             image embedding per image, then `predict` with ONE box at a time, single-mask output); union.
             Where the authors' loop does more work than this, the baseline is left faster (conservative): their
             IBAInterpreter also re-encodes the prompt at every step and averages 10 noise copies per step, while
             here the prompt is encoded once and both paths draw one noise sample per step (our M2IB's choice).
             SamPredictor gets the image through `set_torch_image` from the same resize the batched path uses
             (`set_image` would resize a uint8 copy with PIL instead: same cost, slightly different pixels, and masks
             of random-weight SAMs are too sensitive to compare then). SAM runs in fp32. The saliency code is shared
             with the batched path and switches to bf16 autocast on CUDA by itself (it has no fp32 switch), so on a
             GPU the naive saliency is bf16 too (`naive_precision` says so); on CPU all paths are fp32.
  unbatched  the naive loop with our M2IB (prefix reuse): `speedup_from_batching` = unbatched / batched is what
             batching alone buys; `speedup_from_prefix_reuse` = naive / unbatched what our M2IB loop alone buys.

`--size tiny`: the untrained stand-ins (`localize.standins.write_standins`), sample-corpus images of 96 px.
`--size real`: BiomedCLIP ViT-B/16 + BERT-base and SAM vit_b architectures with random weights (bench/_models.py;
timing needs no trained weights), sample-corpus images of 512 px - a GPU job (SAM vit_b takes minutes per image
on 2 CPU cores; a CPU smoke run: `--images 2 --batch-size 2 --repeats 1 --no-warmup --no-stages`).

Timing: images are loaded beforehand; warm-up calls are excluded; on CUDA the measured regions are bracketed by
`torch.cuda.synchronize()`. Each of `--repeats` rounds times the three paths over all images, alternating batch by
batch so that all see the same machine load; the medians over rounds are reported (`speedup_rounds`: each round's
ratio). On a CPU shared with other jobs use `--threads 1`: several processes spinning 2 threads each on 2 cores
slow small ops by 10x and more, and the ratio with them. `mask_agreement` (mean IoU of the batched and naive
ROIs, an image empty in both counting as 1.0), `saliency_mae` and `unbatched_mask_agreement` show that the paths
do the same work. Stage timings of the batched path (`saliency_s`, `sam_s` = `refine_batch`: components + SAM)
come from one extra pass with a synchronisation around each stage.
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
import dataclasses
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything import SamPredictor

from data.readers import load_image
from data.sample import write_sample_corpus
from localize.config import LocalizeConfig
from localize.localizer import LocalizedItem, Localizer
from localize.prompts import combine_saliency
from localize.refine import SamBoxPrompter, expand_to_boxes, refine_batch, saliency_components
from localize.saliency import M2IBSaliency, encode_prompts, image_text_scores
from localize.standins import write_standins

IMAGE_PX = {"tiny": 96, "real": 512}
DEFAULT_IMAGES = {"tiny": 24, "real": 64}
DEFAULT_BATCH = {"tiny": 8, "real": 16}


# --- inputs -------------------------------------------------------------------------------------------------------


def write_config(size: str, method: str, steps: int, folder: Path) -> LocalizeConfig:
    """Checkpoints for `size` written under `folder`, as a LocalizeConfig using `method`."""
    saliency = {"method": "similarity"} if method == "similarity" else None
    if size == "tiny":
        path = write_standins(folder / "standins")
        overrides = [f"saliency.steps={steps}"] if saliency is None else [f"saliency={json.dumps(saliency)}"]
        return LocalizeConfig.load(path, overrides)
    from bench._models import write_real_size_models  # the real-size writer is only needed here

    clip_spec, sam_spec = write_real_size_models(folder / "real")
    saliency = saliency or {"method": "m2ib", "steps": steps}  # the paper's defaults (layer 7 of 12) otherwise
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


# --- the two paths ------------------------------------------------------------------------------------------------


class StopWatch:
    """Wall-clock seconds of a region; on CUDA the region is bracketed by synchronisation."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


@dataclass
class NaiveResult:
    roi_hw: np.ndarray
    saliency_hw: np.ndarray  # combined saliency at CLIP resolution (what LocalizedItem.saliency_hw holds)
    saliency_s: float = 0.0
    sam_s: float = 0.0


class NaiveLocalizer:
    """The authors' loop on a Localizer's models: one image, one prompt, one SAM box at a time; SAM in fp32.

    ``whole_tower=True`` is the authors' M2IB loop (their IBAInterpreter runs ``get_image_features`` on the whole
    vision tower at every step); ``False`` keeps our prefix reuse, i.e. our own algorithm with nothing batched.
    Both give the same maps (``reuse_prefix`` is exact), so the two isolate what batching alone buys.
    """

    def __init__(self, localizer: Localizer, whole_tower: bool = True) -> None:
        self.loc = localizer
        self.saliency = localizer.saliency
        if whole_tower and isinstance(self.saliency, M2IBSaliency):
            self.saliency = dataclasses.replace(self.saliency, reuse_prefix=False)
        self.predictor = SamPredictor(localizer.sam) if localizer.refine.use_sam else None
        self.prompter = SamBoxPrompter(localizer.sam) if localizer.refine.use_sam else None
        self.watch = StopWatch(localizer.device)
        # Text is encoded once, outside the timed loop, in both paths (the Localizer caches its embeddings too).
        clip = localizer.clip
        self.text_1d = {p: encode_prompts(clip.model, clip.tokenizer, [p]) for p in localizer.prompts.all_prompts()}

    def __call__(self, image: np.ndarray, modality: str) -> NaiveResult:
        loc, refine = self.loc, self.loc.refine
        t0 = self.watch.now()
        # 1. Saliency: the method on one image x one prompt at a time, then combined over the prompts.
        image_13hw = loc.clip.preprocess([image], loc.device)
        entry = loc.prompts.for_modality(modality)
        if float(np.ptp(image)) <= 1e-6:  # a blank image: empty saliency, no model call (as in the Localizer)
            saliency = torch.zeros(image_13hw.shape[-2:])
        else:
            maps, scores = [], []
            for prompt in entry.prompts:
                text_1d = self.text_1d[prompt]
                maps.append(self.saliency(loc.clip.model, image_13hw, text_1d)[0, 0])
                if entry.combine == "best":
                    scores.append(image_text_scores(loc.clip.model, image_13hw, text_1d)[0, 0])
            scores_1p = torch.stack(scores)[None] if scores else None
            saliency = combine_saliency(torch.stack(maps)[None], entry.combine, scores_1p)[0].float().cpu()
        t1 = self.watch.now()
        # 2. Threshold + largest components on the map at image size, then SAM one box at a time.
        saliency_11hw = F.interpolate(saliency[None, None], size=image.shape[:2], mode="bilinear", align_corners=False)
        component_hw, boxes_k4 = saliency_components(saliency_11hw[0, 0].numpy(), refine.threshold, refine.top_k)
        roi_hw = component_hw
        if self.predictor is not None:
            roi_hw = np.zeros(image.shape[:2], dtype=bool)
            if len(boxes_k4):
                self.predictor.set_torch_image(self.prompter.prepare(image), image.shape[:2])
                for box_4 in boxes_k4:
                    masks_1hw, _, _ = self.predictor.predict(box=box_4, multimask_output=False)
                    roi_hw |= masks_1hw[0]
        if refine.box_expansion is not None:
            roi_hw = expand_to_boxes(roi_hw, refine.box_expansion)
        t2 = self.watch.now()
        return NaiveResult(roi_hw, saliency.numpy(), t1 - t0, t2 - t1)


class TimedSaliency:
    """A saliency method that adds its own synchronised wall time to `seconds` (for the stage-timing pass)."""

    def __init__(self, method: Callable, watch: StopWatch) -> None:
        self.method, self.watch, self.seconds = method, watch, 0.0

    def __call__(self, model: torch.nn.Module, images_b3hw: torch.Tensor, text_pd: torch.Tensor) -> torch.Tensor:
        t0 = self.watch.now()
        out = self.method(model, images_b3hw, text_pd)
        self.seconds += self.watch.now() - t0
        return out

    def provenance(self) -> dict:
        return self.method.provenance()


# --- measurement --------------------------------------------------------------------------------------------------


@dataclass
class Round:
    batched_s: float
    naive_s: float
    unbatched_s: float
    batched: list[LocalizedItem] = field(repr=False)
    naive: list[NaiveResult] = field(repr=False)
    unbatched: list[NaiveResult] = field(repr=False)


def batches(n: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def measure_round(
    localizer: Localizer,
    naive: NaiveLocalizer,
    unbatched: NaiveLocalizer,
    images: list[np.ndarray],
    modalities: list[str],
    batch_size: int,
    watch: StopWatch,
) -> Round:
    """The three paths over all images, alternating batch by batch so that all see the same machine load."""
    paths: dict[str, Callable[[list[np.ndarray], list[str]], list]] = {
        "batched": localizer,
        "naive": lambda ims, mods: [naive(image, modality) for image, modality in zip(ims, mods, strict=True)],
        "unbatched": lambda ims, mods: [unbatched(image, modality) for image, modality in zip(ims, mods, strict=True)],
    }
    seconds = dict.fromkeys(paths, 0.0)
    outputs: dict[str, list] = {name: [] for name in paths}
    for part in batches(len(images), batch_size):
        for name, run in paths.items():
            t0 = watch.now()
            outputs[name] += run(images[part], modalities[part])
            seconds[name] += watch.now() - t0
    return Round(
        seconds["batched"],
        seconds["naive"],
        seconds["unbatched"],
        outputs["batched"],
        outputs["naive"],
        outputs["unbatched"],
    )


def stage_times(
    localizer: Localizer, images: list[np.ndarray], modalities: list[str], batch_size: int, watch: StopWatch
) -> dict[str, float]:
    """One batched pass with the saliency stage timed inside the Localizer, then `refine_batch` (components + SAM)
    timed on the same maps, exactly the call the Localizer makes."""
    timed = TimedSaliency(localizer.saliency, watch)
    staged = Localizer(localizer.clip, localizer.sam, timed, localizer.refine, localizer.prompts, localizer.device)
    total_s = sam_s = 0.0
    for part in batches(len(images), batch_size):
        t0 = watch.now()
        items = staged(images[part], modalities[part])
        t1 = watch.now()
        refine_batch([item.saliency_hw for item in items], images[part], localizer.sam, localizer.refine)
        total_s, sam_s = total_s + t1 - t0, sam_s + watch.now() - t1
    return {"saliency_s": timed.seconds, "sam_s": sam_s, "batched_stage_pass_s": total_s}


def agreement(batched: list[LocalizedItem], naive: list[NaiveResult]) -> dict[str, float]:
    """Mean IoU of the ROIs (an image empty in both paths counts as 1.0) and mean |saliency difference|."""
    ious, maes = [], []
    for b, n in zip(batched, naive, strict=True):
        union = np.logical_or(b.roi_hw, n.roi_hw).sum()
        ious.append(1.0 if union == 0 else float(np.logical_and(b.roi_hw, n.roi_hw).sum() / union))
        maes.append(float(np.abs(b.saliency_hw - n.saliency_hw).mean()))
    return {
        "mask_agreement": float(np.mean(ious)),
        "mask_agreement_min": float(np.min(ious)),
        "saliency_mae": float(np.mean(maes)),
    }


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return torch.device(name)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "real"), default="tiny")
    parser.add_argument("--method", choices=("m2ib", "similarity"), default="m2ib")
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
    args.images = DEFAULT_IMAGES[args.size] if args.images is None else args.images
    args.batch_size = DEFAULT_BATCH[args.size] if args.batch_size is None else args.batch_size
    if min(args.images, args.batch_size, args.repeats, args.steps, 1 if args.threads is None else args.threads) < 1:
        parser.error("--images, --batch-size, --repeats, --steps and --threads must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    watch = StopWatch(device)
    with tempfile.TemporaryDirectory(prefix="bench-localize-") as tmp:
        config = write_config(args.size, args.method, args.steps, Path(tmp))
        localizer = Localizer.from_config(config, device)
        images, modalities = sample_images(args.images, IMAGE_PX[args.size], Path(tmp))
    naive, unbatched = NaiveLocalizer(localizer), NaiveLocalizer(localizer, whole_tower=False)

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
        "method": args.method,
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu, threads={torch.get_num_threads()}",
        "n_images": len(images),
        "batch_size": args.batch_size,
        "steps": args.steps if args.method == "m2ib" else None,
        "repeats": args.repeats,
        "batched_images_per_s": len(images) / batched_s,
        "naive_images_per_s": len(images) / naive_s,
        "speedup_vs_naive": naive_s / batched_s,
        # Our per-item algorithm (prefix reuse included) one image x one prompt x one box at a time: what batching
        # alone buys, and what our M2IB loop alone buys over the authors' (same maps either way).
        "unbatched_images_per_s": len(images) / unbatched_s,
        "speedup_from_batching": unbatched_s / batched_s,
        "speedup_from_prefix_reuse": naive_s / unbatched_s,
        "naive_whole_tower_per_step": getattr(naive.saliency, "reuse_prefix", None) is False,
        "batched_precision": "bf16 autocast (saliency + SAM)" if cuda else "fp32",
        "naive_precision": (
            "saliency bf16 autocast (shared saliency code, no fp32 switch), SAM fp32 (SamPredictor)" if cuda else "fp32"
        ),
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
    if args.stages:
        result.update(stage_times(localizer, images, modalities, args.batch_size, watch))
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
