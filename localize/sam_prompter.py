"""SAM with box prompts over a batch of images: the same computation as `SamPredictor` per image, batched.

`sam.image_encoder` runs once on the stacked batch of preprocessed images (resized so the longest side is
``img_size``, normalised, padded); the prompt encoder + mask decoder then run per image on its slice with all its
boxes at once - `SamPredictor.set_torch_image` + `predict_torch(boxes=...)`, single-mask output, as the release's
`prompt_sam.py` calls it. Precision is the caller's (`localize.precision.autocast`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide


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
