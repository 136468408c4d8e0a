"""Image classification on a pretrained backbone: full fine-tune or linear probe.

`python -m finetune classify fit --config configs/finetune/classify_tiny.yaml` trains, then tests on the test split
and writes the results JSON (accuracy, macro AUROC / AUPRC / F1) and a confusion-matrix PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch.utils.data import Dataset
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassAveragePrecision,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)
from torchvision.transforms import v2

from finetune.backbone import create_backbone, head_keys
from finetune.data import LabelledImages, assign_splits, read_label_csv, scan_image_folder
from finetune.task import IMAGENET_MEAN, IMAGENET_STD, FinetuneData, FinetuneTask


def classification_metrics(num_classes: int) -> MetricCollection:
    """accuracy (micro), auroc / auprc / f1 (macro over classes); update with (probs_nc, target_n)."""
    return MetricCollection(
        {
            "accuracy": MulticlassAccuracy(num_classes, average="micro"),
            "auroc": MulticlassAUROC(num_classes, average="macro"),
            "auprc": MulticlassAveragePrecision(num_classes, average="macro"),
            "f1": MulticlassF1Score(num_classes, average="macro"),
        }
    )


class ClassificationData(FinetuneData):
    """Labelled images from a CSV (path, label[, frame, modality, split]) or an ImageFolder tree.

    root:        folder the image paths are relative to (the corpus, or the ImageFolder tree).
    labels_csv:  CSV of labelled images (a relative path is looked up under `root` first); None: `root` is an
                 ImageFolder tree (root/<class>/... or root/{train,val,test}/<class>/...).
    modalities:  keep only these modalities (CSV with a modality column), e.g. ['MR'].
    Without a split column / split folders, a seeded stratified split (val_share, test_share) is drawn.
    train_fraction keeps a seeded, stratified subset of the training split (at least one image per class).
    """

    def __init__(
        self,
        root: str = "work/corpus",
        labels_csv: str | None = "labels.csv",
        modalities: list[str] | None = None,
        image_size: int = 224,
        batch_size: int = 32,
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
        self.root = Path(root)
        self.image_size, self.batch_size, self.num_workers, self.augment = image_size, batch_size, num_workers, augment
        table = self._read_table(labels_csv, modalities)
        if "split" not in table.columns:
            table["split"] = assign_splits(table["label"], seed=split_seed, val_share=val_share, test_share=test_share)
        self.class_names: list[str] = sorted(table["label"].unique())
        if len(self.class_names) < 2:
            raise ValueError(f"classification needs at least two classes, found {self.class_names}")
        self.tables: dict[str, pd.DataFrame] = self.split_tables(table)

    def _read_table(self, labels_csv: str | None, modalities: list[str] | None) -> pd.DataFrame:
        if labels_csv is None:
            return scan_image_folder(self.root)
        csv_path = Path(labels_csv)
        if not csv_path.is_absolute() and ((self.root / csv_path).is_file() or not csv_path.is_file()):
            csv_path = self.root / csv_path  # relative paths: under the data root first
        return read_label_csv(csv_path, modalities)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split_size(self, split: str) -> int:
        return len(self.tables[split])

    def _transform(self, train: bool) -> v2.Transform:
        size = (self.image_size, self.image_size)
        geometry = (
            [v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True), v2.RandomHorizontalFlip()]
            if train and self.augment
            else [v2.Resize(size, antialias=True)]
        )
        return v2.Compose([*geometry, v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def split_dataset(self, split: str) -> Dataset:
        train = split == "train"
        return LabelledImages(self.root, self.tables[split], self.class_names, self._transform(train), self.intensity)


class ClassificationModule(FinetuneTask):
    """A timm classifier on the backbone.

    mode: 'finetune' trains everything; 'linear_probe' trains only the new linear head on a frozen backbone whose
    BatchNorm layers stay in eval mode (running statistics are not updated).
    """

    task = "classify"

    def __init__(
        self,
        backbone: str = "resnet50",
        init: str = "scratch",
        num_classes: int = 2,
        class_names: list[str] | None = None,
        mode: Literal["finetune", "linear_probe"] = "finetune",
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_fraction: float = 0.05,
        label_smoothing: float = 0.0,
        strict_load: bool = True,
    ) -> None:
        super().__init__(backbone, init, lr, weight_decay, warmup_fraction)
        self.save_hyperparameters()
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {num_classes} classes")
        self.mode = mode
        self.model, self.load_report = create_backbone(backbone, init, num_classes=num_classes, strict=strict_load)
        if mode == "linear_probe":
            heads = head_keys(backbone)
            for name, param in self.model.named_parameters():
                param.requires_grad = any(name.startswith(h + ".") for h in heads)
            if not any(p.requires_grad for p in self.model.parameters()):
                raise ValueError(f"linear probe: no classifier head found for {backbone} (looked for {heads})")
        elif mode != "finetune":
            raise ValueError(f"mode must be 'finetune' or 'linear_probe', got {mode!r}")
        self.val_metrics = classification_metrics(num_classes).clone(prefix="val/")
        self.test_metrics = classification_metrics(num_classes).clone(prefix="test/")
        self.test_confusion = MulticlassConfusionMatrix(num_classes)

    def train(self, mode: bool = True) -> ClassificationModule:
        super().train(mode)
        if self.mode == "linear_probe":
            self.model.eval()  # frozen features: BatchNorm keeps its pretrained running statistics
        return self

    def on_train_epoch_start(self) -> None:
        # Lightning does not call train() when fitting starts; set the probe's modes explicitly.
        self.train()

    def forward(self, image_b3hw: torch.Tensor) -> torch.Tensor:
        return self.model(image_b3hw)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        image_b3hw, label_b = batch
        loss = F.cross_entropy(self(image_b3hw), label_b, label_smoothing=self.hparams.label_smoothing)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(label_b))
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], metrics: MetricCollection, stage: str) -> None:
        image_b3hw, label_b = batch
        logits_bc = self(image_b3hw).float()
        self.log(f"{stage}/loss", F.cross_entropy(logits_bc, label_b), batch_size=len(label_b))
        probs_bc = logits_bc.softmax(dim=1)
        metrics.update(probs_bc, label_b)
        if stage == "test":
            self.test_confusion.update(probs_bc, label_b)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, "val")

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute(), prog_bar=True)
        self.val_metrics.reset()

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, "test")

    def on_test_epoch_start(self) -> None:
        self.test_metrics.reset()
        self.test_confusion.reset()

    def on_test_epoch_end(self) -> None:
        values = self.test_metrics.compute()
        self.log_dict(values)
        self.test_metrics_out = {k.removeprefix("test/"): float(v) for k, v in values.items()}
        self.confusion_matrix = self.test_confusion.compute().cpu().numpy().astype(np.int64)

    def results_details(self) -> dict[str, Any]:
        details = super().results_details()
        details.update(
            mode=self.mode,
            class_names=self.class_names,
            confusion_matrix=getattr(self, "confusion_matrix", np.zeros(0)).tolist(),
        )
        return details

    def write_artifacts(self, out_dir: Path, stem: str) -> dict[str, str]:
        """The test confusion matrix as `<stem>-confusion.png` (rows: true class, columns: predicted)."""
        if not hasattr(self, "confusion_matrix"):
            return {}
        n = len(self.class_names)
        fig = Figure(figsize=(2 + 0.6 * n, 1.5 + 0.6 * n))
        ax = fig.subplots()
        self.test_confusion.plot(val=torch.from_numpy(self.confusion_matrix), ax=ax, labels=self.class_names)
        ax.set_title(f"{self.backbone_name} ({self.init}), test split")
        fig.tight_layout()
        path = Path(out_dir) / f"{stem}-confusion.png"
        fig.savefig(path, dpi=100)
        return {"confusion_matrix_png": str(path)}
