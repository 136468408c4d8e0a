"""Segmentation scores as medical papers report them: Dice per image, averaged over images (nnU-Net's convention),
with the Dice pooled over every pixel of the split beside it; IoU the same two ways.

Per image and foreground class c: Dice = 2|P∩T| / (|P| + |T|), IoU = |P∩T| / |P∪T|. An image where class c is
absent from both prediction and truth has no defined score: nnU-Net (nnunetv2/evaluation/evaluate_predictions.py)
leaves it NaN and averages with nanmean, so it is skipped; `empty_score` gives it a value instead (e.g. 1.0).
A prediction on an image whose truth is empty scores 0. The headline value averages over images per class, then
over foreground classes. Pooled: the sums of |P∩T|, |P| and |T| over the split, then one Dice / IoU per class.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


def overlap_counts(pred_hw: Tensor, truth_hw: Tensor, num_classes: int) -> Tensor:
    """(3, num_classes − 1) int64: |P∩T|, |P|, |T| of each foreground class in one image of class indices."""
    if pred_hw.shape != truth_hw.shape:
        raise ValueError(f"prediction {tuple(pred_hw.shape)} and truth {tuple(truth_hw.shape)} differ in size")
    classes = torch.arange(1, num_classes, device=pred_hw.device)[:, None]
    pred_cn = pred_hw.reshape(1, -1) == classes
    truth_cn = truth_hw.reshape(1, -1) == classes
    return torch.stack([(pred_cn & truth_cn).sum(1), pred_cn.sum(1), truth_cn.sum(1)])


def dice_iou(counts: Tensor, empty_score: float | None = None) -> tuple[Tensor, Tensor]:
    """Dice and IoU from counts (3, ...) = (|P∩T|, |P|, |T|); NaN (or `empty_score`) where |P| + |T| = 0."""
    inter, pred, truth = counts.double()
    total = pred + truth
    dice = 2 * inter / total
    iou = inter / (total - inter)
    empty = total == 0
    fill = torch.nan if empty_score is None else float(empty_score)
    return dice.masked_fill(empty, fill), iou.masked_fill(empty, fill)


class SegmentationScores(Metric):
    """dice / iou (mean per image), dice_pooled / iou_pooled, n_images; update per image (pred_hw, truth_hw)."""

    full_state_update = False

    def __init__(self, num_classes: int, empty_score: float | None = None) -> None:
        super().__init__()
        self.num_classes, self.empty_score = num_classes, empty_score
        self.add_state("per_image", default=[], dist_reduce_fx="cat")  # (3, C − 1) counts per image
        self.add_state("pooled", default=torch.zeros(3, num_classes - 1, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, pred_hw: Tensor, truth_hw: Tensor) -> None:
        counts = overlap_counts(pred_hw, truth_hw, self.num_classes)
        self.per_image.append(counts[None])
        self.pooled += counts

    def compute(self) -> dict[str, Tensor]:
        rows = self.per_image if isinstance(self.per_image, Tensor) else torch.cat(self.per_image)
        dice_nc, iou_nc = dice_iou(rows.transpose(0, 1), self.empty_score)  # (images, classes)
        dice_pooled, iou_pooled = dice_iou(self.pooled)
        return {
            "dice": dice_nc.nanmean(0).mean().float(),  # per class over images, then over classes
            "dice_pooled": dice_pooled.mean().float(),
            "iou": iou_nc.nanmean(0).mean().float(),
            "iou_pooled": iou_pooled.mean().float(),
            "n_images": torch.tensor(float(len(rows))),
        }
