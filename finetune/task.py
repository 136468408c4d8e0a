"""What every fine-tuning task shares: the optimiser schedule, the test outcome the CLI writes, data bookkeeping."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from data.intensity import IntensityConfig
from finetune.backbone import LoadReport
from finetune.data import stratified_subset

# Images are normalised with ImageNet statistics, as timm's pretrained models and SparK's pretraining expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class FinetuneTask(pl.LightningModule):
    """Base of the task modules: AdamW with warm-up + cosine schedule over trainable parameters.

    Subclasses set `task`, `backbone_name`, `load_report`, and fill `test_metrics_out` (name -> float) at the end of
    testing; the CLI turns those into the run's results JSON.
    """

    task: str = ""

    def __init__(self, backbone: str, init: str, lr: float, weight_decay: float, warmup_fraction: float) -> None:
        super().__init__()
        self.backbone_name = backbone
        self.init = init
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_fraction = warmup_fraction
        self.load_report: LoadReport | None = None
        self.test_metrics_out: dict[str, float] = {}

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        # No weight decay on norms and biases (1-D tensors), as usual for convnets.
        groups = [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": self.weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=self.lr)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(self.warmup_fraction * total)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, total, warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def results_details(self) -> dict[str, Any]:
        """Task-specific extras for the results JSON."""
        return {"load_report": self.load_report.summary() if self.load_report else None}

    def write_artifacts(self, out_dir: Path, stem: str) -> dict[str, str]:
        """Write task-specific files next to the results JSON; return {kind: path}."""
        return {}


class FinetuneData(pl.LightningDataModule):
    """Base of the task data modules: the train-fraction subset and the sizes the results JSON reports."""

    def __init__(self, train_fraction: float, subset_seed: int, intensity: dict[str, Any] | None = None) -> None:
        super().__init__()
        # data.intensity.IntensityConfig fields; use the pretraining run's so the backbone sees familiar images
        self.intensity = IntensityConfig(**(intensity or {}))
        if not 0 < train_fraction <= 1:
            raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction}")
        self.train_fraction = train_fraction
        self.subset_seed = subset_seed

    # Subclasses set these and implement split_size / split_dataset; the loaders below are shared.
    batch_size: int
    num_workers: int
    collate_fn: Callable | None = None
    drop_last_train: bool = True

    def split_tables(self, table: pd.DataFrame) -> dict[str, pd.DataFrame]:
        """Rows per split ('split' column); the training rows reduced to the seeded, stratified (by 'label')
        train-fraction subset."""
        train = table[table["split"] == "train"].reset_index(drop=True)
        if train.empty:
            raise ValueError("the training split is empty")
        subset = stratified_subset(train["label"], self.train_fraction, self.subset_seed)
        return {
            "train": train.iloc[subset].reset_index(drop=True),
            "val": table[table["split"] == "val"].reset_index(drop=True),
            "test": table[table["split"] == "test"].reset_index(drop=True),
        }

    def split_size(self, split: str) -> int:
        raise NotImplementedError

    def split_dataset(self, split: str) -> Dataset:
        raise NotImplementedError

    @property
    def n_train(self) -> int:
        return self.split_size("train")

    @property
    def n_test(self) -> int:
        return self.split_size("test")

    def _loader(self, split: str) -> DataLoader:
        train = split == "train"
        dataset = self.split_dataset(split)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            persistent_workers=self.num_workers > 0,
            drop_last=train and self.drop_last_train and len(dataset) > self.batch_size,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val") if self.split_size("val") else []

    def test_dataloader(self) -> DataLoader:
        if not self.split_size("test"):
            raise ValueError("the test split is empty")
        return self._loader("test")
