"""The Lightning module that trains a small Segment Anything on box prompts with SAM's own loss.

The model is segment_anything's `Sam` built from an architecture mapping (`localize.sam_loader.build_custom_sam`,
the schema of the `.json` that `localize` reads beside a custom checkpoint). A step runs exactly the path the
localizer's `SamBoxPrompter` runs at inference, with gradients: `sam.preprocess` + the image encoder on the
stacked batch, then per image the prompt encoder on its box and the mask decoder with ``multimask_output=False``
(the single-mask token the localizer asks for), `sam.postprocess_masks` back to the image's size; the loss
(`SamLoss`: focal + dice on the mask, 1:1 (SAM's paper: 20:1), MSE on the IoU head) is taken there, against the
object's mask.
"""

from __future__ import annotations

import copy
from typing import Any

import pytorch_lightning as pl
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from localize.sam_loader import build_custom_sam
from pretrain.schedules import WarmupCosineSchedule
from smallmodels.sam_loss import SamLoss


class SamBoxTraining(pl.LightningModule):
    """Trains `Sam(arch)` to turn a box prompt into the mask of the object inside it.

    Args:
        arch: the custom-SAM architecture (image_encoder / prompt_encoder / mask_decoder constructor arguments,
            pixel_mean / pixel_std), as written to the checkpoint's `.json`.
        lr, weight_decay, warmup_steps: AdamW, linear warm-up then cosine decay (`pretrain.schedules`).
        focal_weight, dice_weight, iou_weight: `SamLoss` weights (ours 1, 1, 1; SAM's paper 20, 1, 1).
    """

    def __init__(
        self,
        arch: dict[str, Any],
        lr: float = 2e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 20,
        focal_weight: float = 1.0,
        dice_weight: float = 1.0,
        iou_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.arch = copy.deepcopy(arch)
        self.sam = build_custom_sam(self.arch, source="model.arch")
        self.loss = SamLoss(focal_weight, dice_weight, iou_weight)
        self.resize = ResizeLongestSide(self.sam.image_encoder.img_size)

    @property
    def img_size(self) -> int:
        return self.sam.image_encoder.img_size

    def forward(self, images_3hw: list[torch.Tensor], boxes_4: list[torch.Tensor], sizes: list[tuple[int, int]]):
        """Mask logits at each image's original size and predicted IoUs, one box per image."""
        # 1. The image encoder on the stacked batch (normalised, padded to a square).
        embeddings_bchw = self.sam.image_encoder(torch.stack([self.sam.preprocess(x) for x in images_3hw]))
        logits, ious = [], []
        for j, (image_3hw, box_4, size) in enumerate(zip(images_3hw, boxes_4, sizes, strict=True)):
            # 2. The box in the resized frame -> prompt tokens -> the single-mask output.
            box_14 = self.resize.apply_boxes_torch(box_4[None].float(), size)
            sparse, dense = self.sam.prompt_encoder(points=None, boxes=box_14, masks=None)
            low_res_11hw, iou_11 = self.sam.mask_decoder(
                image_embeddings=embeddings_bchw[j : j + 1],
                image_pe=self.sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            # 3. Back to the original image size, as the localizer reads SAM's masks.
            logits.append(self.sam.postprocess_masks(low_res_11hw, tuple(image_3hw.shape[-2:]), size)[0, 0])
            ious.append(iou_11[0, 0])
        return logits, torch.stack(ious)

    def training_step(self, batch: dict[str, list[torch.Tensor]], batch_idx: int) -> torch.Tensor:
        sizes = [tuple(t.shape) for t in batch["truth_hw"]]
        logits, iou_pred_b = self(batch["image_3hw"], batch["box_4"], sizes)
        # Masks differ in size: each term per mask, then averaged (the loss's own per-mask mean).
        terms = [
            self.loss(lg[None], iou_pred_b[j : j + 1], t[None])
            for j, (lg, t) in enumerate(zip(logits, batch["truth_hw"], strict=True))
        ]
        out = {key: torch.stack([t[key] for t in terms]).mean() for key in terms[0]}
        for key, value in out.items():
            self.log(f"train/{key}", value, prog_bar=key in ("loss", "iou"), batch_size=len(logits))
        return out["loss"]

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(self.sam.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": WarmupCosineSchedule(optimizer), "interval": "step"},
        }

    def on_train_start(self) -> None:
        # the number of steps is known only once the train loader exists
        total = int(self.trainer.estimated_stepping_batches)
        self.lr_schedulers().set_horizon(total, min(self.hparams.warmup_steps, total - 1))
