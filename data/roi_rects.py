"""The expanded ROI: each connected component of a mask replaced by its filled bounding rectangle.

What the MWM authors pretrain on (`masks_expanded/`, `pretrain/utils/custom.py`) is this rectangle form of the
refined ROI, computed at the image's native resolution. Two rules exist in their release, both reproduced here:

  ``"sam"``    MWM `text2region/postprocessing/postprocess_sam.py` (`expand_mask`), applied to the SAM output,
               the ROI the pipeline ends with: for a component with bounding rectangle (x, y, w, h),
               c = x + w // 2, n = int(w * ratio), columns [max(0, c - n // 2), min(W, c + n // 2)) (same for rows).
               At ratio 1.0 this is [x, x + 2 * (w // 2)): an odd width loses its last column, a component one
               pixel wide vanishes.
  ``"coarse"`` MWM `text2region/postprocessing/postprocess_saliency_maps.py` (`generate_expanded_mask`), applied
               to the binarised saliency when SAM is skipped: n = int(w * ratio), x0 = max(0, x - (n - w) // 2),
               columns [x0, x0 + n] INCLUSIVE (cv2.rectangle's end point), clipped to the image: at ratio 1.0 one
               column and one row more than the tight rectangle.

Components are outer contours (`cv2.findContours`, RETR_EXTERNAL, 8-connected), as in both scripts: a component
inside another one's hole adds no rectangle of its own. Rectangles are xyxy, end-exclusive, in pixels.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

RectRule = Literal["sam", "coarse"]
RECT_RULES: tuple[str, ...] = ("sam", "coarse")


def outer_rects(mask_hw: np.ndarray) -> np.ndarray:
    """(k, 4) int64 ``x, y, w, h`` of the outer contours of a binary mask (non-zero = ROI), in contour order."""
    contours, _ = cv2.findContours(
        (np.asarray(mask_hw) != 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    return np.array([cv2.boundingRect(c) for c in contours], dtype=np.int64).reshape(-1, 4)


def expanded_rects(mask_hw: np.ndarray, ratio: float = 1.0, rule: RectRule = "sam") -> np.ndarray:
    """(k, 4) int64 xyxy end-exclusive rectangles of the expanded ROI of ``mask_hw`` (see the module docstring);
    empty rectangles (a one-pixel-thin component under the "sam" rule) are dropped."""
    if rule not in RECT_RULES:
        raise ValueError(f"rect rule must be one of {RECT_RULES}, got {rule!r}")
    height, width = np.asarray(mask_hw).shape[:2]
    xywh = outer_rects(mask_hw)
    x, y, w, h = xywh.T
    new_w, new_h = (w * ratio).astype(np.int64), (h * ratio).astype(np.int64)  # int(): truncation, as the release
    if rule == "sam":
        cx, cy = x + w // 2, y + h // 2
        x0, x1 = np.maximum(0, cx - new_w // 2), np.minimum(width, cx + new_w // 2)
        y0, y1 = np.maximum(0, cy - new_h // 2), np.minimum(height, cy + new_h // 2)
    else:
        x0, y0 = np.maximum(0, x - (new_w - w) // 2), np.maximum(0, y - (new_h - h) // 2)
        x1, y1 = np.minimum(width, x0 + new_w + 1), np.minimum(height, y0 + new_h + 1)
    rects = np.stack([x0, y0, x1, y1], axis=1).reshape(-1, 4)
    return rects[(rects[:, 2] > rects[:, 0]) & (rects[:, 3] > rects[:, 1])]


def fill_rects(rects_k4: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """uint8 0/1 mask of ``size_hw`` with every xyxy end-exclusive rectangle filled."""
    out = np.zeros(size_hw, dtype=np.uint8)
    for x0, y0, x1, y1 in np.asarray(rects_k4, dtype=np.int64).reshape(-1, 4):
        out[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = 1
    return out
