"""Criteria that score a set of ROIs without masks, for `localize tune` (higher = better; per image).

- ``evidence`` (deletion evidence): cos(text, image without the ROI rolled by half the image) - cos(text, image
  without the ROI). A ROI over what the prompt names removes its evidence; the same-shape control elsewhere keeps
  large ROIs from winning by size (a whole-image ROI scores 0).
- ``crop``: cos(text, the ROI alone, the rest blacked out) - cos(text, the complement alone): the prompt should
  describe what the ROI holds better than what it leaves out (a whole-image ROI against a black image).
- ``prompt_agreement``: the mean IoU of a prompt's ROIs with those of the modality's other prompts at the same grid
  point: paraphrases of one target should find the same region (averaged over prompts: the mean pairwise IoU;
  the prompt that agrees most is the paraphrases' medoid).
- ``seed_agreement``: the IoU of the ROIs of two draws of M2IB's noise (seeds s and s + 1): a stable map is a map
  the information bottleneck is sure of.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from localize.evaluate import dice_iou

CRITERIA = ("evidence", "crop", "prompt_agreement", "seed_agreement")


def _cosines(clip, images: Sequence[np.ndarray], text_d: torch.Tensor) -> np.ndarray:
    """cos(text, image) for each image (float (H, W) in [0, 1]) through the CLIP's own preprocessing."""
    with torch.no_grad():
        emb_nd = clip.model.encode_image(clip.preprocess(list(images), text_d.device))
    return (F.normalize(emb_nd.float(), dim=-1) @ F.normalize(text_d.float(), dim=0)).cpu().numpy()


def deletion_evidence(clip, images: list[np.ndarray], rois: list[np.ndarray], text_d: torch.Tensor) -> np.ndarray:
    """Per image: cos(text, image without the rolled ROI) - cos(text, image without the ROI)."""
    removed = [image_hw * ~roi_hw for image_hw, roi_hw in zip(images, rois, strict=True)]
    control = [
        image_hw * ~np.roll(roi_hw, (roi_hw.shape[0] // 2, roi_hw.shape[1] // 2), axis=(0, 1))
        for image_hw, roi_hw in zip(images, rois, strict=True)
    ]
    cos_n = _cosines(clip, removed + control, text_d)
    return cos_n[len(images) :] - cos_n[: len(images)]


def crop_contrast(clip, images: list[np.ndarray], rois: list[np.ndarray], text_d: torch.Tensor) -> np.ndarray:
    """Per image: cos(text, image x ROI) - cos(text, image x (not ROI))."""
    inside = [image_hw * roi_hw for image_hw, roi_hw in zip(images, rois, strict=True)]
    outside = [image_hw * ~roi_hw for image_hw, roi_hw in zip(images, rois, strict=True)]
    cos_n = _cosines(clip, inside + outside, text_d)
    return cos_n[: len(images)] - cos_n[len(images) :]


def iou_with_others(rois_by_variant: Sequence[Sequence[np.ndarray]], j: int) -> np.ndarray:
    """Per image: the mean IoU of variant j's ROI with each other variant's; both empty counts 1; NaN alone."""
    others = [k for k in range(len(rois_by_variant)) if k != j]
    n = len(rois_by_variant[j])
    if not others:
        return np.full(n, np.nan)
    return np.array(
        [np.mean([dice_iou(rois_by_variant[j][i], rois_by_variant[k][i])[1] for k in others]) for i in range(n)]
    )


def mean_pairwise_iou(rois_by_variant: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """Per image: the mean IoU over pairs of variants (prompts, noise seeds) of its ROIs; both empty counts 1.
    One variant alone has no pair: NaN. (IoU is symmetric: the mean over variants of `iou_with_others`.)"""
    return np.mean([iou_with_others(rois_by_variant, j) for j in range(len(rois_by_variant))], axis=0)
