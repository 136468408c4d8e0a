"""Semantic segmentation: a UNet decoder on the backbone's hierarchical features; Dice and IoU.

`python -m finetune segment fit --config configs/finetune/segment_tiny.yaml` trains, tests and writes the results
JSON. Data: a corpus in the sample layout (labels.csv items with truth/<item_id>.png masks) or a folder of images
with a folder of same-named masks. Validation and test score each image at its own resolution: the logits of the
resized image are resized back to the mask's size before the argmax (finetune.seg_metrics: mean Dice per image as
the headline 'dice', pooled Dice beside it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from timm.optim import param_groups_weight_decay
from torch.utils.data import Dataset
from torchvision.transforms import v2

from data.label_volumes import CorpusLabels
from data.manifest import read_manifest
from data.portable import portable
from finetune.augment import normalize
from finetune.data import (
    MaskedImages,
    collate_stack_and_list,
    corpus_mask_table,
    folder_mask_table,
    read_mask_hw,
    table_splits,
    under_root,
)
from finetune.seg_metrics import SegmentationScores
from finetune.task import FinetuneData, FinetuneTask
from finetune.unet import UNet


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
    normalization: (mean, std) per channel, the backbone's pretraining statistics; None = ImageNet's (the CLI sets
                   it from model.init, `finetune.backbone.pretrained_statistics`).
    manifest:      the corpus's manifest (relative: under `root` first): each image's patient, and the slices of
                   series- or patient-level rows of `labels_csv` (see `finetune.data.read_label_csv`).
    The split is by patient (`data.splits`): the CSV's split column (refused if a patient is on two sides), else a
    seeded split of whole patients stratified by 'label' (CSV) or by empty/non-empty mask (folders).
    train_fraction: seeded stratified subset of the training patients.
    packed, init, intensity: a packed image store of the corpus to read images from, the model's init (linked by
                 the CLI) and the intensity rules; see `FinetuneData` (the rules follow the store / the export).
    input_channels: "2d" or "2.5d" (slices z-1, z, z+1 as the channels; needs `manifest`), as the backbone was
                 pretrained: see `FinetuneData`.
    label_volumes: a CSV (label, images) of NIfTI label volumes / DICOM SEG objects (`data.label_volumes`; relative:
                 under `root` first), matched to the images by geometry (needs `manifest`), instead of the PNG truth:
                 the items are the manifest's images the list covers, split by patient (stratified by empty / non-empty
                 mask; `labels_csv` is not read). A grid that does not match is refused, naming the file and reason.
    """

    def __init__(
        self,
        root: str = "work/corpus",
        labels_csv: str | None = "labels.csv",
        masks_dir: str | None = None,
        modalities: list[str] | None = None,
        manifest: str | None = None,
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
        normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
        packed: str | None = None,
        init: str | None = None,
        input_channels: str = "2d",
        label_volumes: str | None = None,
    ) -> None:
        super().__init__(train_fraction, subset_seed, intensity, packed, init, input_channels)
        self.normalization = normalization
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background and must be >= 2, got {num_classes}")
        self.root, self.num_classes = Path(root), num_classes
        self.image_size, self.batch_size, self.num_workers, self.augment = image_size, batch_size, num_workers, augment
        self.volumes: CorpusLabels | None = None
        if label_volumes is not None:
            if manifest is None:
                raise ValueError("data.label_volumes matches label volumes to the manifest's images: set data.manifest")
            self.volumes = CorpusLabels(
                under_root(self.root, label_volumes), self.root, read_manifest(under_root(self.root, manifest))
            )
            table = self.volumes.table()
        elif masks_dir is not None:
            table = folder_mask_table(self.root, masks_dir)
        else:
            csv_path = Path(labels_csv or "labels.csv")
            table = corpus_mask_table(
                self.root,
                self.root / csv_path if not csv_path.is_absolute() else csv_path,
                modalities,
                None if manifest is None else under_root(self.root, manifest),
            )
        if "label" not in table.columns:  # stratify by whether the mask has any foreground
            table["label"] = ["fg" if self._mask(row).any() else "empty" for row in table.to_dict("records")]
        what = str(label_volumes or masks_dir or self.root / (labels_csv or "labels.csv"))
        table = table_splits(table, seed=split_seed, val_share=val_share, test_share=test_share, what=what)
        self.tables: dict[str, pd.DataFrame] = self.split_tables(table)
        self.neighbours = self.slice_neighbours(self.root, manifest)

    def _mask(self, row: dict) -> torch.Tensor:
        return read_mask_hw(row["mask_path"], self.num_classes, self.volumes, row.get("mask_row"))

    def split_size(self, split: str) -> int:
        return len(self.tables[split])

    def _transform(self, train: bool) -> v2.Transform:
        size = (self.image_size, self.image_size)
        geometry = (
            [v2.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True), v2.RandomHorizontalFlip()]
            if train and self.augment
            else [v2.Resize(size, antialias=True)]
        )
        return v2.Compose([*geometry, normalize(self.normalization)])  # Mask: nearest, not normalised

    def collate_for(self, split: str) -> Callable | None:
        return None if split == "train" else collate_stack_and_list  # evaluation masks keep their own sizes

    def split_dataset(self, split: str) -> Dataset:
        train = split == "train"
        transform = self._transform(train)
        return MaskedImages(
            self.root,
            self.tables[split],
            self.num_classes,
            transform,
            self.intensity,
            train,
            self.packed,
            self.neighbours,
            self.volumes,
        )


class SegmentationModule(FinetuneTask):
    """UNet on the backbone, trained with cross-entropy + soft Dice (AdamW, warm-up + cosine); scored with the mean
    Dice per image ('dice', the medical convention), the pooled Dice ('dice_pooled') and IoU both ways, each image
    at its own resolution. empty_score: the score of an image where a class is absent from truth and prediction
    (None: skipped, as nnU-Net does)."""

    task = "segment"

    def __init__(
        self,
        backbone: str = "resnet50",
        init: str = "scratch",
        num_classes: int = 2,
        decoder_channels: list[int] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_epochs: float = 5,
        dice_weight: float = 1.0,
        empty_score: float | None = None,
        strict_load: bool = True,
    ) -> None:
        super().__init__(backbone, init)
        self.save_hyperparameters()
        self.hparams.update(portable(dict(self.hparams)))  # no absolute path in checkpoints (docs/CORPUS.md)
        self.net = UNet(backbone, init, num_classes, decoder_channels, strict_load)
        self.load_report = self.net.load_report
        self.dice_weight = dice_weight
        self.val_scores = SegmentationScores(num_classes, empty_score)
        self.test_scores = SegmentationScores(num_classes, empty_score)

    def forward(self, image_b3hw: torch.Tensor) -> torch.Tensor:
        return self.net(image_b3hw)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = torch.optim.AdamW(param_groups_weight_decay(self.net, hp.weight_decay), lr=hp.lr)
        return self.warmup_cosine(
            optimizer, warmup_epochs=hp.warmup_epochs, warmup_start_ratio=0.005, min_lr_ratio=0.001
        )

    def _loss(self, logits_bchw: torch.Tensor, mask_bhw: torch.Tensor) -> torch.Tensor:
        logits_bchw = logits_bchw.float()
        return F.cross_entropy(logits_bchw, mask_bhw) + self.dice_weight * soft_dice_loss(logits_bchw, mask_bhw)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        image_b3hw, mask_bhw = batch
        loss = self._loss(self(image_b3hw), mask_bhw)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(mask_bhw))
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, list[torch.Tensor]], scores: SegmentationScores, stage: str) -> None:
        """Resize each image's logits back to its mask's (original) size, then score and take the loss there."""
        image_b3hw, masks_hw = batch
        logits_bchw = self(image_b3hw).float()
        losses = []
        for logits_chw, mask_hw in zip(logits_bchw, masks_hw, strict=True):
            logits_1chw = F.interpolate(logits_chw[None], size=mask_hw.shape, mode="bilinear", align_corners=False)
            losses.append(self._loss(logits_1chw, mask_hw[None]))
            scores.update(logits_1chw[0].argmax(dim=0), mask_hw)
        self.log(f"{stage}/loss", torch.stack(losses).mean(), batch_size=len(masks_hw))

    def validation_step(self, batch: tuple[torch.Tensor, list[torch.Tensor]], batch_idx: int) -> None:
        self._evaluate(batch, self.val_scores, "val")

    def on_validation_epoch_end(self) -> None:
        values = self.val_scores.compute()
        self.log_dict({f"val/{k}": v for k, v in values.items() if k != "n_images"}, prog_bar=True)
        self.val_scores.reset()

    def on_test_epoch_start(self) -> None:
        self.test_scores.reset()

    def test_step(self, batch: tuple[torch.Tensor, list[torch.Tensor]], batch_idx: int) -> None:
        self._evaluate(batch, self.test_scores, "test")

    def on_test_epoch_end(self) -> None:
        values = {k: float(v) for k, v in self.test_scores.compute().items()}
        self.n_scored = int(values.pop("n_images"))
        self.log_dict({f"test/{k}": v for k, v in values.items()})
        self.test_metrics_out = values

    def results_details(self) -> dict[str, Any]:
        details = super().results_details()
        details.update(
            num_classes=self.hparams.num_classes,
            scored_at="each image's own resolution",
            empty_score=self.hparams.empty_score,
            n_scored=getattr(self, "n_scored", None),
        )
        return details
