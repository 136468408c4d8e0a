"""Saliency map -> ROI mask: binarise, keep the largest components, SAM box prompts, union, optional box expansion.

Per image (the paper's steps 3-5):
  1. saliency (resized bilinearly to the image) > ``threshold`` -> connected components (8-connected); keep the
     ``top_k`` largest. Nothing above the threshold -> an empty ROI with ``empty=True`` (not an error).
  2. One xyxy box per kept component -> SAM box prompts, single-mask output -> union of the masks
     (``use_sam=False`` skips SAM: the ROI is the kept components themselves, for ablations).
  3. ``box_expansion=r`` (None = off): every connected component of the ROI becomes its filled bounding rectangle
     scaled by r about its centre (r = 1.0: the tight rectangle), clipped to the image.

Batched SAM: ``sam.image_encoder`` runs once on the stacked batch of preprocessed images (resized so the longest
side is ``img_size``, normalised, padded); the prompt encoder + mask decoder then run per image on its slice with all
its boxes at once - the same computation as ``SamPredictor.set_torch_image`` + ``predict_torch``.

Each ``RoiResult`` holds: ``roi_hw`` bool at image size; ``boxes_k4`` the SAM prompt boxes (the kept saliency
components' bounding boxes, xyxy in pixels, end-exclusive, k <= top_k); ``score`` = mean saliency inside the final
ROI (0.0 when empty; comparable with and without SAM); ``sam_iou`` = SAM's mean predicted IoU of its masks (NaN
without SAM or boxes); ``empty`` = the final ROI has no pixel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from localize.saliency.common import autocast_for


@dataclass(frozen=True)
class RefineConfig:
    """Refinement parameters (paper defaults: threshold 0.3, 2 components, SAM on, no box expansion)."""

    threshold: float = 0.3
    top_k: int = 2
    box_expansion: float | None = None
    use_sam: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold < 1.0 or self.top_k < 1:
            raise ValueError(f"refine needs 0 <= threshold < 1 and top_k >= 1; got {self}.")
        if self.box_expansion is not None and self.box_expansion <= 0:
            raise ValueError(f"refine box_expansion must be a ratio > 0 (1.0 = tight) or null; got {self}.")

    def provenance(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RoiResult:
    """The ROI of one image (see the module docstring for each field's meaning)."""

    roi_hw: np.ndarray
    boxes_k4: np.ndarray
    score: float
    sam_iou: float
    empty: bool


def saliency_components(saliency_hw: np.ndarray, threshold: float, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``top_k`` largest 8-connected components of ``saliency > threshold``: (mask bool (H,W), boxes (k,4))."""
    count, labels_hw, stats, _ = cv2.connectedComponentsWithStats(
        (saliency_hw > threshold).astype(np.uint8), connectivity=8
    )
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = 1 + np.argsort(-areas, kind="stable")[:top_k]  # label 0 is the background
    x, y = stats[keep, cv2.CC_STAT_LEFT], stats[keep, cv2.CC_STAT_TOP]
    boxes_k4 = np.stack([x, y, x + stats[keep, cv2.CC_STAT_WIDTH], y + stats[keep, cv2.CC_STAT_HEIGHT]], axis=1)
    return np.isin(labels_hw, keep), boxes_k4.astype(np.float32).reshape(-1, 4)


def expand_to_boxes(mask_hw: np.ndarray, ratio: float) -> np.ndarray:
    """Each 8-connected component -> its filled bounding rectangle scaled by ``ratio`` about its centre, clipped."""
    height, width = mask_hw.shape
    _, boxes_k4 = saliency_components(mask_hw.astype(np.float32), 0.5, top_k=height * width)
    out_hw = np.zeros_like(mask_hw, dtype=bool)
    for x0, y0, x1, y1 in boxes_k4:
        cx, cy, half_w, half_h = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * ratio / 2, (y1 - y0) * ratio / 2
        top, bottom = max(0, math.floor(cy - half_h)), min(height, math.ceil(cy + half_h))
        left, right = max(0, math.floor(cx - half_w)), min(width, math.ceil(cx + half_w))
        out_hw[top:bottom, left:right] = True
    return out_hw


class SamBoxPrompter:
    """SAM with box prompts over a batch of images: one stacked encoder pass, then per-image decoding."""

    def __init__(self, sam: Sam) -> None:
        self.sam = sam
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)

    @property
    def device(self) -> torch.device:
        return self.sam.device

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """An image float in [0,1] ((H,W) or (H,W,3)) or uint8 -> (1,3,h,w) 0-255 RGB, longest side = img_size."""
        img = torch.as_tensor(np.asarray(image), device=self.device)
        img_hwc = img.float() * 255.0 if img.dtype != torch.uint8 else img.float()
        img_3hw = img_hwc.expand(3, *img_hwc.shape) if img_hwc.ndim == 2 else img_hwc.permute(2, 0, 1)
        return self.transform.apply_image_torch(img_3hw[None].contiguous())

    @torch.no_grad()
    def embed(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Image embeddings (B,C,h,w) of a stacked batch + each image's resized (unpadded) input size."""
        resized = [self.prepare(image) for image in images]
        batch_b3ss = torch.cat([self.sam.preprocess(r) for r in resized])
        with autocast_for(self.device):
            embeddings_bchw = self.sam.image_encoder(batch_b3ss)
        return embeddings_bchw.float(), [tuple(r.shape[-2:]) for r in resized]

    @torch.no_grad()
    def masks(
        self,
        embedding_1chw: torch.Tensor,
        boxes_k4: torch.Tensor,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask logits (k,H,W) at the original size and predicted IoUs (k,) for k xyxy pixel boxes."""
        boxes = self.transform.apply_boxes_torch(boxes_k4.to(self.device, torch.float32), original_size)
        with autocast_for(self.device):
            sparse, dense = self.sam.prompt_encoder(points=None, boxes=boxes, masks=None)
            low_res_k1hw, iou_k1 = self.sam.mask_decoder(
                image_embeddings=embedding_1chw,
                image_pe=self.sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
        logits_k1hw = self.sam.postprocess_masks(low_res_k1hw.float(), input_size, original_size)
        return logits_k1hw[:, 0], iou_k1[:, 0].float()


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
    sizes = [tuple(np.asarray(image).shape[:2]) for image in images]
    saliency_hw = [_resize_map(s, size) for s, size in zip(saliency, sizes, strict=True)]
    components = [saliency_components(s, config.threshold, config.top_k) for s in saliency_hw]

    prompter = SamBoxPrompter(sam) if config.use_sam else None
    with_boxes = [i for i, (_, boxes) in enumerate(components) if len(boxes)]
    sam_out: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    if prompter is not None and with_boxes:
        embeddings_bchw, input_sizes = prompter.embed([images[i] for i in with_boxes])
        sam_out = {
            i: prompter.masks(embeddings_bchw[j : j + 1], torch.from_numpy(components[i][1]), input_sizes[j], sizes[i])
            for j, i in enumerate(with_boxes)
        }

    results = []
    for i, (component_hw, boxes_k4) in enumerate(components):
        roi_hw, sam_iou = component_hw, float("nan")
        if prompter is not None:
            roi_hw = np.zeros(sizes[i], dtype=bool)
            if i in sam_out:
                logits_khw, iou_k = sam_out[i]
                roi_hw = (logits_khw > prompter.sam.mask_threshold).any(dim=0).cpu().numpy()
                sam_iou = float(iou_k.mean())
        if config.box_expansion is not None:
            roi_hw = expand_to_boxes(roi_hw, config.box_expansion)
        empty = not roi_hw.any()
        score = 0.0 if empty else float(saliency_hw[i][roi_hw].mean())
        results.append(RoiResult(roi_hw, boxes_k4, score, sam_iou, empty))
    return results


def _resize_map(saliency: torch.Tensor | np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """A saliency map resized bilinearly to ``size_hw`` as float32 numpy."""
    map_11hw = torch.as_tensor(saliency, dtype=torch.float32).cpu()[None, None]
    if tuple(map_11hw.shape[-2:]) != tuple(size_hw):
        map_11hw = F.interpolate(map_11hw, size=size_hw, mode="bilinear", align_corners=False)
    return map_11hw[0, 0].numpy()
