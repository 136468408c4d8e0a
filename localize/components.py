"""Mask geometry of the refinement, as the release computes it (MWM `text2region/`, MedCLIP-SAMv2).

binarise            saliency map at CLIP resolution -> the image's size with cv2 INTER_NEAREST, stored as 8-bit
                    by truncation (MWM `generate_saliency_maps.py` writes `(vmap * 255).astype(np.uint8)`), read
                    back /255 and thresholded with ``>`` (`postprocess_saliency_maps.py`).
largest_components  the components (8-connected) whose pixel count is among the ``k`` largest counts: ties
                    at the k-th size are all kept, so more than k components can survive (both
                    `postprocess_saliency_maps.py` and `prompt_sam.py`'s `write_mask_to_folder` do this).
prompt_boxes        one box per outer contour, xyxy = (x, y, min(x + w, W - 1), min(y + h, H - 1))
                    (MedCLIP-SAMv2 `prompt_sam.py`, `scoremap2bbox` with ``--multicontour``).
"""

from __future__ import annotations

import cv2
import numpy as np

from data.roi_rects import outer_rects


def to_image_size(saliency_hw: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """A saliency map resized to ``size_hw`` (height, width) with OpenCV's nearest neighbour, float32."""
    saliency_hw = np.asarray(saliency_hw, dtype=np.float32)
    if saliency_hw.shape == tuple(size_hw):
        return saliency_hw
    return cv2.resize(saliency_hw, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_NEAREST)


def binarise(saliency_hw: np.ndarray, threshold: float) -> np.ndarray:
    """bool mask of ``floor(255 * saliency) / 255 > threshold`` (the release's 8-bit round trip)."""
    stored_u8 = (np.clip(saliency_hw, 0.0, 1.0) * 255.0).astype(np.uint8)
    return stored_u8 / 255.0 > threshold


def largest_components(mask_hw: np.ndarray, k: int) -> np.ndarray:
    """bool mask of the 8-connected components whose area is among the ``k`` largest areas (ties kept)."""
    count, labels_hw, stats, _ = cv2.connectedComponentsWithStats((np.asarray(mask_hw) != 0).astype(np.uint8))
    areas = stats[1:, cv2.CC_STAT_AREA]  # label 0 is the background
    if k < 1 or count < 2:
        return np.zeros(labels_hw.shape, dtype=bool)
    kept_areas = np.sort(areas)[::-1][:k]
    keep = 1 + np.flatnonzero(np.isin(areas, kept_areas))
    return np.isin(labels_hw, keep)


def prompt_boxes(mask_hw: np.ndarray) -> np.ndarray:
    """(k, 4) float32 xyxy box prompts, one per outer contour of ``mask_hw``, the far edge clipped to W-1 / H-1."""
    height, width = np.asarray(mask_hw).shape[:2]
    x, y, w, h = outer_rects(mask_hw).T
    boxes_k4 = np.stack([x, y, np.minimum(x + w, width - 1), np.minimum(y + h, height - 1)], axis=1)
    return boxes_k4.astype(np.float32).reshape(-1, 4)
