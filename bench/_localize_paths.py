"""The paths `bench/localize.py` times: the authors' per-image loop (the baseline), our loop unbatched, and the
measurement helpers (rounds, stage timings, agreement between paths, fp32-vs-bf16 ROI disagreement)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from segment_anything import SamPredictor

from data.roi_rects import expanded_rects, fill_rects
from localize.components import binarise, largest_components, prompt_boxes, to_image_size
from localize.localizer import LocalizedItem, Localizer
from localize.precision import autocast
from localize.prompts import combine_saliency
from localize.saliency import M2IBSaliency, encode_prompts, image_text_scores
from localize.sam_prompter import SamBoxPrompter


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
    rects_k4: np.ndarray
    saliency_s: float = 0.0
    sam_s: float = 0.0


def authors_m2ib(method: M2IBSaliency) -> M2IBSaliency:
    """The release's M2IB with ``method``'s layer, beta, steps, lr and seed, run as the authors' IBAInterpreter
    runs it: the WHOLE vision tower at every step (``reuse_prefix=False``; it gives the same maps) with 10 noise
    copies per step."""
    release = M2IBSaliency()
    return dataclasses.replace(
        method,
        noise_samples=release.noise_samples,
        noise_stats=release.noise_stats,
        map_at=release.map_at,
        noise_var=release.noise_var,
        preset=release.preset,
        reuse_prefix=False,
    )


class NaiveLocalizer:
    """One image, one prompt at a time on a Localizer's models, in fp32, as the release's scripts run.

    ``authors=True``: the saliency is the authors' M2IB loop (`authors_m2ib`) whatever the Localizer's preset;
    ``False``: the Localizer's own saliency method (prefix reuse included), i.e. our algorithm with nothing
    batched. SAM is segment_anything's `SamPredictor` with all boxes of an image in one `predict_torch` call
    (`prompt_sam.py`); the refinement steps are the Localizer's rules (`localize.components`, `data.roi_rects`).
    """

    def __init__(self, localizer: Localizer, authors: bool = True) -> None:
        self.loc = localizer
        self.saliency = localizer.saliency
        if authors and isinstance(self.saliency, M2IBSaliency):
            self.saliency = authors_m2ib(self.saliency)
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
        # 2. Binarise, largest components, one box each; SAM with all boxes at once; union; K largest components.
        saliency_hw = to_image_size(saliency.numpy(), image.shape[:2])
        roi_hw = largest_components(binarise(saliency_hw, refine.threshold), refine.top_k)
        if self.predictor is not None:
            boxes_k4 = prompt_boxes(roi_hw)
            roi_hw = np.zeros(image.shape[:2], dtype=bool)
            if len(boxes_k4):
                self.predictor.set_torch_image(self.prompter.prepare(image), image.shape[:2])
                boxes = self.predictor.transform.apply_boxes_torch(
                    torch.from_numpy(boxes_k4).to(loc.device), image.shape[:2]
                )
                masks_k1hw, _, _ = self.predictor.predict_torch(None, None, boxes=boxes, multimask_output=False)
                roi_hw = largest_components(masks_k1hw[:, 0].any(dim=0).cpu().numpy(), len(boxes_k4))
        rects_k4 = expanded_rects(roi_hw, refine.expand_ratio, refine.rect_rule)
        t2 = self.watch.now()
        return NaiveResult(roi_hw, saliency.numpy(), rects_k4, t1 - t0, t2 - t1)


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
    from localize.refine import refine_batch

    timed = TimedSaliency(localizer.saliency, watch)
    staged = Localizer(
        localizer.clip, localizer.sam, timed, localizer.refine, localizer.prompts, localizer.device, localizer.precision
    )
    total_s = sam_s = 0.0
    for part in batches(len(images), batch_size):
        t0 = watch.now()
        items = staged(images[part], modalities[part])
        t1 = watch.now()
        with autocast(localizer.device, localizer.precision):
            refine_batch([item.saliency_hw for item in items], images[part], localizer.sam, localizer.refine)
        total_s, sam_s = total_s + t1 - t0, sam_s + watch.now() - t1
    return {"saliency_s": timed.seconds, "sam_s": sam_s, "batched_stage_pass_s": total_s}


def agreement(batched: list[LocalizedItem], naive: list[NaiveResult]) -> dict[str, float]:
    """Mean IoU of the ROIs (an image empty in both paths counts as 1.0), whether the expanded ROIs' rectangles
    are identical, and mean |saliency difference|."""
    ious, maes = [], []
    for b, n in zip(batched, naive, strict=True):
        union = np.logical_or(b.roi_hw, n.roi_hw).sum()
        ious.append(1.0 if union == 0 else float(np.logical_and(b.roi_hw, n.roi_hw).sum() / union))
        maes.append(float(np.abs(b.saliency_hw - n.saliency_hw).mean()))
    same_rects = all(np.array_equal(b.rects_k4, n.rects_k4) for b, n in zip(batched, naive, strict=True))
    return {
        "mask_agreement": float(np.mean(ious)),
        "mask_agreement_min": float(np.min(ious)),
        "rects_identical": bool(same_rects),
        "saliency_mae": float(np.mean(maes)),
    }


def roi_disagreement(a: list[LocalizedItem], b: list[LocalizedItem]) -> dict[str, float | int]:
    """How many ROI pixels differ between two runs on the same images (refined mask and expanded ROI)."""
    pixels = sum(item.roi_hw.size for item in a)
    differ = sum(int(np.logical_xor(x.roi_hw, y.roi_hw).sum()) for x, y in zip(a, b, strict=True))
    roi = sum(int(np.logical_or(x.roi_hw, y.roi_hw).sum()) for x, y in zip(a, b, strict=True))
    rects_differ = sum(int(np.logical_xor(_rect_mask(x), _rect_mask(y)).sum()) for x, y in zip(a, b, strict=True))
    return {
        "roi_pixels_differing": differ,
        "roi_pixel_disagreement": differ / pixels,  # share of all image pixels
        "roi_pixels_differing_share_of_roi": differ / roi if roi else 0.0,
        "rect_pixels_differing": rects_differ,
        "images_with_any_difference": sum(
            bool(np.logical_xor(x.roi_hw, y.roi_hw).any()) for x, y in zip(a, b, strict=True)
        ),
    }


def _rect_mask(item: LocalizedItem) -> np.ndarray:
    return fill_rects(item.rects_k4, item.roi_hw.shape).astype(bool)
