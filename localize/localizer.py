"""One batch of images -> ROIs: prompts per modality, batched saliency, combination, SAM refinement.

Everything model-side runs under one precision (`localize.precision`): fp32 (the release) or bf16 autocast."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.hashing import file_sha256
from localize.clip_loader import LoadedClip, check_clip_folder, load_biomedclip
from localize.config import WORK_MAX_SIDE, LocalizeConfig
from localize.hf_biomedclip import hf_weights_file
from localize.precision import autocast, check_precision, require_gpu_for_bf16
from localize.prompts import PromptConfig, combine_saliency
from localize.refine import RefineConfig, RoiResult, refine_batch
from localize.saliency import SaliencyMethod, build_saliency, encode_prompts, image_text_scores
from localize.sam_loader import load_sam, parse_sam_spec

# Bump when the same provenance would give other ROIs (a method change), so an older cache is not resumed with them.
# 2: the release's M2IB and refinement by default. The code's own version is in the cache's info (data.provenance).
LOCALIZER_VERSION = 2


@dataclass(frozen=True)
class LocalizedItem:
    """What the cache stores for one image: ROI at the image's size, combined saliency at CLIP resolution
    (the cache resizes it), SAM prompt boxes in image pixels, the expanded ROI's rectangles (end-exclusive
    pixels), score (mean saliency inside the ROI)."""

    roi_hw: np.ndarray
    saliency_hw: np.ndarray
    boxes_k4: np.ndarray
    rects_k4: np.ndarray
    score: float
    empty: bool
    presence: float = float("nan")  # image-text similarity, highest over the prompts (computed for `volume: series`)


class Localizer:
    """Holds the frozen models and turns a batch of images (float [0, 1], any sizes) into ROIs."""

    def __init__(
        self,
        clip: LoadedClip,
        sam: torch.nn.Module | None,
        saliency: SaliencyMethod,
        refine: RefineConfig,
        prompts: PromptConfig,
        device: torch.device,
        precision: str = "fp32",
        presence: bool = False,
    ) -> None:
        check_precision(precision)
        self.presence = presence  # compute each image's presence score (localize.volume)
        self.clip, self.sam, self.saliency, self.refine, self.prompts = clip, sam, saliency, refine, prompts
        self.device, self.precision = device, precision
        self._text: dict[str, torch.Tensor] = {}  # prompt -> unit-norm embedding, computed once

    @classmethod
    def from_config(cls, config: LocalizeConfig, device: torch.device | str = "cpu") -> Localizer:
        """The models of a run; bf16 is refused off the GPU (`require_gpu_for_bf16`)."""
        device = torch.device(device)
        require_gpu_for_bf16(device, config.precision)
        sam = load_sam(config.sam, device) if config.refine.use_sam else None
        return cls(
            load_biomedclip(config.clip, device),
            sam,
            build_saliency(config.saliency),
            config.refine,
            PromptConfig.load(config.prompts),
            device,
            config.precision,
            presence=config.volume.enabled,
        )

    def __call__(self, images: Sequence[np.ndarray], modalities: Sequence[str]) -> list[LocalizedItem]:
        with autocast(self.device, self.precision):
            return self._localize(images, modalities)

    def _localize(self, images: Sequence[np.ndarray], modalities: Sequence[str]) -> list[LocalizedItem]:
        # 1. CLIP input for the whole batch. A blank image (no dynamic range, e.g. the empty end slices of a
        #    volume) shows nothing: its saliency is empty by definition, so the models never see it.
        images_b3hw = self.clip.preprocess(list(images), self.device)
        blank = [float(np.ptp(image)) <= 1e-6 for image in images]
        saliency_bhw: list[torch.Tensor | None] = [torch.zeros(images_b3hw.shape[-2:]) if b else None for b in blank]
        presence = [float("nan")] * len(images)
        # 2. Saliency on images x prompts, one call per prompt set (per modality), then combined per image.
        for modality in dict.fromkeys(modalities):
            rows = [i for i, m in enumerate(modalities) if m == modality and not blank[i]]
            if not rows:
                continue
            entry = self.prompts.for_modality(modality)
            text_pd = self._embed(entry.prompts)
            group_b3hw = images_b3hw[rows]
            maps_bphw = self.saliency(self.clip.model, group_b3hw, text_pd)
            need_scores = entry.combine == "best" or self.presence
            scores_bp = image_text_scores(self.clip.model, group_b3hw, text_pd) if need_scores else None
            combined_bhw = combine_saliency(maps_bphw, entry.combine, scores_bp)
            for j, i in enumerate(rows):
                saliency_bhw[i] = combined_bhw[j].float().cpu()
                if self.presence:
                    presence[i] = float(scores_bp[j].max())
        # 3. Threshold, components, SAM box prompts on a stacked batch, union.
        rois: list[RoiResult] = refine_batch(saliency_bhw, images, self.sam, self.refine)
        return [
            LocalizedItem(r.roi_hw, s.numpy(), r.boxes_k4, r.rects_k4, r.score, r.empty, p)
            for r, s, p in zip(rois, saliency_bhw, presence, strict=True)
        ]

    def _embed(self, prompts: Sequence[str]) -> torch.Tensor:
        missing = [p for p in prompts if p not in self._text]
        if missing:
            for prompt, emb_d in zip(
                missing, encode_prompts(self.clip.model, self.clip.tokenizer, missing), strict=True
            ):
                self._text[prompt] = emb_d
        return torch.stack([self._text[p] for p in prompts])


def localizer_provenance(config: LocalizeConfig) -> dict[str, Any]:
    """What decides the cache's content, without loading the models: checkpoints by hash, not by path,
    so moving model files between machines keeps a cache resumable."""
    provenance: dict[str, Any] = {
        "clip": _clip_fingerprint(config.clip),
        "sam": _sam_fingerprint(config.sam) if config.refine.use_sam else None,
        "saliency": build_saliency(config.saliency).provenance(),
        "refine": config.refine.provenance(),
        "precision": config.precision,
        "prompts": PromptConfig.load(config.prompts).to_dict(),
        "intensity": config.intensity,  # the images the models see
        "untrained": bool(config.untrained),
        "mask_size": config.geometry.mask_size,
        "localizer_version": LOCALIZER_VERSION,
    }
    if config.work_max_side != WORK_MAX_SIDE:  # only when changed: caches written before it existed stay resumable
        provenance["work_max_side"] = int(config.work_max_side)
    if config.models_label:  # only when set: caches written before the field existed stay resumable
        provenance["models_label"] = config.models_label
    if config.volume.enabled:  # absent: the release's per-slice rule (caches written before stay resumable)
        provenance["volume"] = config.volume.provenance()
    return provenance


def _clip_fingerprint(spec: str) -> dict[str, str]:
    if spec.startswith("hf-biomedclip:"):
        weights = hf_weights_file(Path(spec.removeprefix("hf-biomedclip:")).expanduser())
        return {"source": "hf-biomedclip", "weights": weights.name, "sha256": file_sha256(weights)}
    if spec.startswith("local-dir:"):
        weights = check_clip_folder(Path(spec.removeprefix("local-dir:")).expanduser())
        return {"source": "local-dir", "weights": weights.name, "sha256": file_sha256(weights)}
    return {"source": spec}


def _sam_fingerprint(spec: str | dict[str, Any]) -> dict[str, str]:
    arch, checkpoint = parse_sam_spec(spec)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"SAM checkpoint not found: {checkpoint}")
    return {"arch": arch, "sha256": file_sha256(checkpoint)}
