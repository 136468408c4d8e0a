"""SAM's training loss (Kirillov et al. 2023, section 3 and appendix A): focal + dice on the mask, MSE on the IoU head.

Mask loss: a linear combination of focal loss and dice loss, as DETR / MaskFormer define them (per mask,
averaged over the masks of the batch): focal with alpha 0.25, gamma 2, averaged over pixels; dice
``1 - (2 * sum(p * t) + 1) / (sum(p) + sum(t) + 1)`` on p = sigmoid(logits). IoU head: mean squared error between
its prediction and the IoU of the predicted mask (logits > 0) with the truth, added with weight 1.

Weights: focal 1 : dice 1 here (SAM's paper: 20 : 1, `focal_weight=20`); at 20:1 the small SAM learned to predict
nothing inside a tumour's box (docs/FIDELITY.md, docs/MODELS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import sigmoid_focal_loss


def focal_loss(
    logits_bhw: torch.Tensor, truth_bhw: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Sigmoid focal loss, mean over each mask's pixels, then over the masks."""
    per_pixel = sigmoid_focal_loss(logits_bhw.float(), truth_bhw.float(), alpha=alpha, gamma=gamma, reduction="none")
    return per_pixel.flatten(1).mean(1).mean()


def dice_loss(logits_bhw: torch.Tensor, truth_bhw: torch.Tensor) -> torch.Tensor:
    """Soft dice loss with DETR's +1 smoothing, per mask, averaged over the masks."""
    prob_bn, truth_bn = logits_bhw.float().sigmoid().flatten(1), truth_bhw.float().flatten(1)
    dice_b = (2 * (prob_bn * truth_bn).sum(1) + 1) / (prob_bn.sum(1) + truth_bn.sum(1) + 1)
    return (1 - dice_b).mean()


def mask_iou(logits_bhw: torch.Tensor, truth_bhw: torch.Tensor) -> torch.Tensor:
    """IoU (B,) of the binarised prediction (logits > 0) with the truth; an empty union counts as 1."""
    pred_bn, truth_bn = (logits_bhw > 0).flatten(1), truth_bhw.bool().flatten(1)
    inter, union = (pred_bn & truth_bn).sum(1).float(), (pred_bn | truth_bn).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


@dataclass(frozen=True)
class SamLoss:
    """``loss(logits_bhw, iou_pred_b, truth_bhw) -> dict(loss, focal, dice, iou_mse, iou)``; focal 1 : dice 1 : IoU
    MSE 1 (SAM's: 20 : 1 : 1, see the module docstring)."""

    focal_weight: float = 1.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0

    def __call__(
        self, logits_bhw: torch.Tensor, iou_pred_b: torch.Tensor, truth_bhw: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        focal, dice = focal_loss(logits_bhw, truth_bhw), dice_loss(logits_bhw, truth_bhw)
        iou_b = mask_iou(logits_bhw.detach(), truth_bhw)  # the target carries no gradient
        iou_mse = (iou_pred_b.float() - iou_b).square().mean()
        loss = self.focal_weight * focal + self.dice_weight * dice + self.iou_weight * iou_mse
        return {"loss": loss, "focal": focal, "dice": dice, "iou_mse": iou_mse, "iou": iou_b.mean()}
