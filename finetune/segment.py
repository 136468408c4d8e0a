"""Semantic segmentation: a UNet decoder on the backbone's hierarchical features; Dice and IoU.

`python -m finetune segment fit --config configs/finetune/segment_tiny.yaml` trains, tests and writes the results
JSON. Data: a corpus in the sample layout (labels.csv items with truth/<item_id>.png masks) or a folder of images
with a folder of same-named masks.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchmetrics import MetricCollection
from torchmetrics.segmentation import DiceScore, MeanIoU
from torchvision.transforms import v2

from finetune.data import (
    MaskedImages,
    assign_splits,
    corpus_mask_table,
    folder_mask_table,
    read_mask_hw,
)
from finetune.task import IMAGENET_MEAN, IMAGENET_STD, FinetuneData, FinetuneTask
from finetune.unet import UNet


def segmentation_metrics(num_classes: int) -> MetricCollection:
    """dice (over the whole split, foreground classes) and iou (mean IoU of foreground classes).

    Update with (pred_bhw, target_bhw) class-index maps.
    """
    with warnings.catch_warnings():  # torchmetrics warns about a default we set explicitly
        warnings.filterwarnings("ignore", message="DiceScore metric currently defaults")
        dice = DiceScore(
            num_classes, include_background=False, average="micro", aggregation_level="global", input_format="index"
        )
    return MetricCollection({"dice": dice, "iou": MeanIoU(num_classes, include_background=False, input_format="index")})


def soft_dice_loss(logits_bchw: torch.Tensor, target_bhw: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice of the foreground classes, pooled over the batch (robust to small lesions)."""
    probs = logits_bchw.softmax(dim=1)[:, 1:]
    onehot = F.one_hot(target_bhw, logits_bchw.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(probs.dtype)
    inter = (probs * onehot).sum(dim=(0, 2, 3))
    total = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    return 1 - ((2 * inter + eps) / (total + eps)).mean()


class SegmentationData(FinetuneData):
    """Image + mask pairs.

    root:          the corpus (sample layout: `labels_csv` items with root/truth/<item_id>.png) or, with
                   `masks_dir`, the folder of images (masks matched by file stem in `masks_dir`).
    num_classes:   classes including background; 2 = binary (mask > 0 is foreground), else mask values are ids.
    The split comes from the CSV's split column, else a seeded split stratified by 'label' (CSV) or by
    empty/non-empty mask (folders). train_fraction: seeded stratified subset of the training split.
    """

    def __init__(
        self,
        root: str = "work/corpus",
        labels_csv: str | None = "labels.csv",
        masks_dir: str | None = None,
        modalities: list[str] | None = None,
        num_classes: int = 2,
        image_size: int = 224,
        batch_size: int = 8,
        num_workers: int = 0,
        augment: bool = True,
        train_fraction: float = 1.0,
        subset_seed: int = 0,
        split_seed: int = 0,
        val_share: float = 0.2,
        test_share: float = 0.2,
        intensity: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(train_fraction, subset_seed, intensity)
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background and must be >= 2, got {num_classes}")
        self.root, self.num_classes = Path(root), num_classes
        self.image_size, self.batch_size, self.num_workers, self.augment = image_size, batch_size, num_workers, augment
        if masks_dir is not None:
            table = folder_mask_table(self.root, masks_dir)
        else:
            csv_path = Path(labels_csv or "labels.csv")
            table = corpus_mask_table(
                self.root, self.root / csv_path if not csv_path.is_absolute() else csv_path, modalities
            )
        if "label" not in table.columns:  # stratify by whether the mask has any foreground
            table["label"] = ["fg" if read_mask_hw(p, num_classes).any() else "empty" for p in table["mask_path"]]
        if "split" not in table.columns:
            table["split"] = assign_splits(table["label"], seed=split_seed, val_share=val_share, test_share=test_share)
        self.tables: dict[str, pd.DataFrame] = self.split_tables(table)

    def split_size(self, split: str) -> int:
        return len(self.tables[split])

    def _transform(self, train: bool) -> v2.Transform:
        size = (self.image_size, self.image_size)
        geometry = (
            [v2.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True), v2.RandomHorizontalFlip()]
            if train and self.augment
            else [v2.Resize(size, antialias=True)]
        )
        return v2.Compose([*geometry, v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])  # Mask: nearest, not normalised

    def split_dataset(self, split: str) -> Dataset:
        train = split == "train"
        return MaskedImages(self.root, self.tables[split], self.num_classes, self._transform(train), self.intensity)


class SegmentationModule(FinetuneTask):
    """UNet on the backbone, trained with cross-entropy + soft Dice; tested with Dice and IoU."""

    task = "segment"

    def __init__(
        self,
        backbone: str = "resnet50",
        init: str = "scratch",
        num_classes: int = 2,
        decoder_channels: list[int] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_fraction: float = 0.05,
        dice_weight: float = 1.0,
        strict_load: bool = True,
    ) -> None:
        super().__init__(backbone, init, lr, weight_decay, warmup_fraction)
        self.save_hyperparameters()
        self.net = UNet(backbone, init, num_classes, decoder_channels, strict_load)
        self.load_report = self.net.load_report
        self.dice_weight = dice_weight
        self.val_metrics = segmentation_metrics(num_classes).clone(prefix="val/")
        self.test_metrics = segmentation_metrics(num_classes).clone(prefix="test/")

    def forward(self, image_b3hw: torch.Tensor) -> torch.Tensor:
        return self.net(image_b3hw)

    def _loss(self, logits_bchw: torch.Tensor, mask_bhw: torch.Tensor) -> torch.Tensor:
        logits_bchw = logits_bchw.float()
        return F.cross_entropy(logits_bchw, mask_bhw) + self.dice_weight * soft_dice_loss(logits_bchw, mask_bhw)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        image_b3hw, mask_bhw = batch
        loss = self._loss(self(image_b3hw), mask_bhw)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(mask_bhw))
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], metrics: MetricCollection, stage: str) -> None:
        image_b3hw, mask_bhw = batch
        logits_bchw = self(image_b3hw)
        self.log(f"{stage}/loss", self._loss(logits_bchw, mask_bhw), batch_size=len(mask_bhw))
        metrics.update(logits_bchw.argmax(dim=1), mask_bhw)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, "val")

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute(), prog_bar=True)
        self.val_metrics.reset()

    def on_test_epoch_start(self) -> None:
        self.test_metrics.reset()

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, "test")

    def on_test_epoch_end(self) -> None:
        values = self.test_metrics.compute()
        self.log_dict(values)
        self.test_metrics_out = {k.removeprefix("test/"): float(v) for k, v in values.items()}

    def results_details(self) -> dict[str, Any]:
        details = super().results_details()
        details.update(num_classes=self.hparams.num_classes)
        return details
