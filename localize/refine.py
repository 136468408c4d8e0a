"""Saliency map -> ROI, as the release refines it (MWM `text2region/`, MedCLIP-SAMv2 `prompt_sam.py`).

Per image (the paper's steps 3-5; the geometric rules are in `localize.components` and `data.roi_rects`):
  1. The map (CLIP resolution, [0,1]) goes to the image's size (nearest), is binarised at ``threshold`` and the
     ``top_k`` largest 8-connected components are kept (ties at the k-th size kept too). Nothing above the
     threshold -> an empty ROI with ``empty=True`` (not an error).
  2. One box per kept component (outer contour) -> SAM with all boxes of the image in one call, single-mask
     output -> union of the masks -> the K largest components of the union are kept, K = the number of boxes.
     ``use_sam=False`` skips SAM: the ROI is the kept saliency components themselves (the release's "coarse"
     output, for ablations).
  3. The expanded ROI (what the authors pretrain on): each component of the ROI replaced by its filled bounding
     rectangle scaled by ``expand_ratio`` (`data.roi_rects`, rule "sam", or "coarse" without SAM), computed here at
     the image's native size and stored in the cache beside the mask; readers choose the shape.

Each ``RoiResult`` holds: ``roi_hw`` bool at image size; ``boxes_k4`` the SAM prompt boxes (xyxy pixels);
``rects_k4`` the expanded ROI's rectangles (xyxy end-exclusive pixels); ``score`` = mean saliency inside the final
ROI (0.0 when empty; comparable with and without SAM); ``sam_iou`` = SAM's mean predicted IoU of its masks (NaN
without SAM or boxes); ``empty`` = the final ROI has no pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from segment_anything.modeling import Sam

from data.roi_rects import expanded_rects
from localize.components import binarise, largest_components, prompt_boxes, to_image_size
from localize.sam_prompter import SamBoxPrompter


@dataclass(frozen=True)
class RefineConfig:
    """Refinement parameters; the defaults are the release's (threshold 0.3, 2 components, SAM, ratio 1.0) and
    this class is the one place they are written."""

    threshold: float = 0.3
    top_k: int = 2
    use_sam: bool = True
    expand_ratio: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold < 1.0 or self.top_k < 1:
            raise ValueError(f"refine needs 0 <= threshold < 1 and top_k >= 1; got {self}.")
        if self.expand_ratio <= 0:
            raise ValueError(f"refine expand_ratio must be > 0 (1.0 = the bounding rectangle); got {self}.")

    @property
    def rect_rule(self) -> str:
        """The release's expansion rule for the ROI this configuration ends with (`data.roi_rects`)."""
        return "sam" if self.use_sam else "coarse"

    def provenance(self) -> dict:
        return {**asdict(self), "rect_rule": self.rect_rule}


@dataclass(frozen=True)
class RoiResult:
    """The ROI of one image (see the module docstring for each field's meaning)."""

    roi_hw: np.ndarray
    boxes_k4: np.ndarray
    rects_k4: np.ndarray
    score: float
    sam_iou: float
    empty: bool


def refine_batch(
    saliency: Sequence[torch.Tensor | np.ndarray],
    images: Sequence[np.ndarray],
    sam: Sam | None,
    config: RefineConfig | None = None,
) -> list[RoiResult]:
    """ROIs for a batch of images of any sizes; ``saliency[i]`` (any resolution, [0,1]) belongs to ``images[i]``."""
    if len(saliency) != len(images):
        raise ValueError(f"refine_batch got {len(saliency)} saliency maps for {len(images)} images.")
    config = config or RefineConfig()
    if config.use_sam and sam is None:
        raise ValueError("refine use_sam=True needs a SAM model (or set use_sam: false).")
    # 1. Maps at image size -> binarised -> the top_k largest components -> one box per component.
    sizes = [tuple(np.asarray(image).shape[:2]) for image in images]
    saliency_hw = [to_image_size(_numpy(s), size) for s, size in zip(saliency, sizes, strict=True)]
    coarse_hw = [largest_components(binarise(s, config.threshold), config.top_k) for s in saliency_hw]
    boxes = [prompt_boxes(c) for c in coarse_hw]

    # 2. SAM on the stacked batch of images that have boxes; per image, the union of its box masks.
    prompter = SamBoxPrompter(sam) if config.use_sam else None
    with_boxes = [i for i, b in enumerate(boxes) if len(b)]
    sam_out: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    if prompter is not None and with_boxes:
        embeddings_bchw, input_sizes = prompter.embed([images[i] for i in with_boxes])
        sam_out = {
            i: prompter.masks(embeddings_bchw[j : j + 1], torch.from_numpy(boxes[i]), input_sizes[j], sizes[i])
            for j, i in enumerate(with_boxes)
        }

    results = []
    for i, (coarse, boxes_k4) in enumerate(zip(coarse_hw, boxes, strict=True)):
        roi_hw, sam_iou = coarse, float("nan")
        if prompter is not None:
            roi_hw = np.zeros(sizes[i], dtype=bool)
            if i in sam_out:
                logits_khw, iou_k = sam_out[i]
                union_hw = (logits_khw > prompter.sam.mask_threshold).any(dim=0).cpu().numpy()
                roi_hw = largest_components(union_hw, len(boxes_k4))
                sam_iou = float(iou_k.mean())
        # 3. The expanded ROI at native size; the score on the continuous map.
        rects_k4 = expanded_rects(roi_hw, config.expand_ratio, config.rect_rule)
        empty = not roi_hw.any()
        score = 0.0 if empty else float(saliency_hw[i][roi_hw].mean())
        results.append(RoiResult(roi_hw, boxes_k4, rects_k4, score, sam_iou, empty))
    return results


def _numpy(saliency: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(saliency, torch.Tensor):
        return saliency.detach().float().cpu().numpy()
    return np.asarray(saliency, dtype=np.float32)
