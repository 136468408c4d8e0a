"""Image classification on a pretrained backbone: full fine-tune or linear probe.

`python -m finetune classify fit --config configs/finetune/classify_tiny.yaml` trains, then tests on the test split
and writes the results JSON (accuracy, macro AUROC / AUPRC / F1 per image, and the same per series: `series_*`, each
series' slice probabilities averaged) and a confusion-matrix PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.loss import BinaryCrossEntropy, SoftTargetCrossEntropy
from timm.optim import param_groups_layer_decay
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import Dataset
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassAveragePrecision,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)

from data.portable import portable
from finetune.augment import Policy, classify_transform
from finetune.backbone import create_backbone, head_keys
from finetune.data import LabelledImages, read_label_csv, scan_image_folder, series_groups, table_splits, under_root
from finetune.layer_decay import classify_layer_id, layer_decay_groups, resnet_depths, spark_no_decay
from finetune.optim import make_optimizer
from finetune.probe import ProbeHead
from finetune.recipe import RECIPES, Optimizer
from finetune.task import FinetuneData, FinetuneTask
from pretrain.schedules import scaled_lr


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


def series_metrics(
    probs_nc: torch.Tensor, target_n: torch.Tensor, series: Sequence[str], num_classes: int
) -> dict[str, float]:
    """The classification metrics per series: each series' slice probabilities averaged, its label the most
    frequent of its slices (ties: the smallest class index); keys 'series_<metric>'."""
    codes, index = np.unique(np.asarray(series, dtype=str), return_inverse=True)
    index_n = torch.as_tensor(index, dtype=torch.long)
    sums_sc = torch.zeros(len(codes), num_classes, dtype=torch.float64).index_add_(0, index_n, probs_nc.double())
    counts = torch.bincount(index_n, minlength=len(codes)).double()
    votes_sc = torch.zeros(len(codes), num_classes, dtype=torch.float64)
    votes_sc.index_put_((index_n, target_n.long()), torch.ones(len(index_n), dtype=torch.float64), accumulate=True)
    metrics = classification_metrics(num_classes)
    metrics.update((sums_sc / counts[:, None]).float(), votes_sc.argmax(dim=1))  # argmax: first of tied maxima
    return {f"series_{k}": float(v) for k, v in metrics.compute().items()}


def labelled_table(
    root: Path,
    labels_csv: str | None,
    modalities: list[str] | None = None,
    split_seed: int = 0,
    val_share: float = 0.2,
    test_share: float = 0.2,
    manifest: str | None = None,
) -> pd.DataFrame:
    """The labelled images of `labels_csv` (relative: under `root` first; keyed by path, item, series or patient,
    see `finetune.data.read_label_csv`, with the `manifest` of the corpus) or of the ImageFolder tree `root`, with a
    split column by patient: the table's own (refused if a patient is on two sides), else a seeded split of whole
    patients stratified by label (`val_share`, `test_share`: shares of patients)."""
    manifest_path = None if manifest is None else under_root(root, manifest)
    if labels_csv is None:
        table, what = scan_image_folder(root), str(root)
    else:
        csv_path = under_root(root, labels_csv)
        table, what = read_label_csv(csv_path, modalities, manifest_path), str(csv_path)
    return table_splits(table, seed=split_seed, val_share=val_share, test_share=test_share, what=what)


class ClassificationData(FinetuneData):
    """Labelled images from a CSV (path, label[, frame, modality, split]) or an ImageFolder tree.

    root:        folder the image paths are relative to (the corpus, or the ImageFolder tree).
    labels_csv:  CSV of labels (a relative path is looked up under `root` first), keyed by path (one row per image),
                 item_id, series_key or patient_key (these three reach their slices through `manifest`), with
                 optional patient_key / series_key / patient columns; see `finetune.data.read_label_csv`.
                 None: `root` is an ImageFolder tree (root/<class>/... or root/{train,val,test}/<class>/...).
    manifest:    the corpus's `data scan` manifest (relative: under `root` first): the patient and series of each
                 image, and the slices of series- or patient-level labels. None: each file is its own patient.
    modalities:  keep only these modalities (CSV with a modality column), e.g. ['MR'].
    Splits are by patient (`data.splits`): a split column / split folders are refused if a patient is on two
    sides; without one, a seeded split of whole patients stratified by label (val_share, test_share of patients).
    train_fraction keeps a seeded, stratified subset of the training patients (at least one per class).
    Classification also scores the test split per series (`series_of_test`: slice probabilities averaged).
    augment:     training policy of finetune.augment ('spark' | 'mae' | 'light' | 'none'; true = 'light').
    eval_crop:   evaluation centre-crop fraction (SparK 0.95, MAE 0.875); 1 = resize the whole image.
    packed, init, intensity: a packed image store of the corpus to read images from, the model's init (linked by
                 the CLI) and the intensity rules; see `FinetuneData` (the rules follow the store / the export).
    input_channels: "2d" or "2.5d" (slices z-1, z, z+1 as the channels; needs `manifest`), as the backbone was
                 pretrained: see `FinetuneData`.
    """

    def __init__(
        self,
        root: str = "work/corpus",
        labels_csv: str | None = "labels.csv",
        modalities: list[str] | None = None,
        manifest: str | None = None,
        image_size: int = 224,
        batch_size: int = 32,
        num_workers: int = 0,
        augment: bool | Policy = "light",
        eval_crop: float = 1.0,
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
    ) -> None:
        super().__init__(train_fraction, subset_seed, intensity, packed, init, input_channels)
        self.root = Path(root)
        self.image_size, self.batch_size, self.num_workers = image_size, batch_size, num_workers
        self.augment: Policy = "light" if augment is True else "none" if augment is False else augment
        self.eval_crop, self.normalization = eval_crop, normalization
        classify_transform(self.augment, image_size, True, eval_crop, normalization)  # bad values fail early
        table = labelled_table(self.root, labels_csv, modalities, split_seed, val_share, test_share, manifest)
        self.class_names: list[str] = sorted(table["label"].unique())
        if len(self.class_names) < 2:
            raise ValueError(f"classification needs at least two classes, found {self.class_names}")
        self.tables: dict[str, pd.DataFrame] = self.split_tables(table)
        self.neighbours = self.slice_neighbours(self.root, manifest)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split_size(self, split: str) -> int:
        return len(self.tables[split])

    def series_of(self, split: str) -> np.ndarray:
        """The series of each image of `split`, in loader order (`finetune.data.series_groups`)."""
        return series_groups(self.tables[split])

    def split_dataset(self, split: str) -> Dataset:
        train = split == "train"
        transform = classify_transform(self.augment, self.image_size, train, self.eval_crop, self.normalization)
        return LabelledImages(
            self.root, self.tables[split], self.class_names, transform, self.intensity, self.packed, self.neighbours
        )


class ClassificationModule(FinetuneTask):
    """A timm classifier on the backbone: full fine-tune (SparK's recipe) or linear probe (MAE's).

    mode:  'finetune' trains everything with finetune.recipe.SPARK_FINETUNE (LAMB, layer decay, mixup, drop
           path, EMA); 'linear_probe' puts finetune.probe.ProbeHead (BatchNorm without affine + Linear) on the
           pooled features of a frozen backbone kept in eval mode (running statistics stay the pretrained ones)
           and trains only that head with MAE_LINEAR_PROBE (LARS, base lr 0.1).
    The recipe fields (optimizer ... loss, see finetune.recipe.ClassifyRecipe) default to the mode's recipe; a
    value given here replaces it. lr: an absolute learning rate instead of base_lr x batch / 256.
    With EMA (ema_decay > 0) validation and test also score the EMA weights ('val_ema/*', 'ema_*' metrics).
    """

    task = "classify"

    def __init__(
        self,
        backbone: str = "resnet50",
        init: str = "scratch",
        num_classes: int = 2,
        class_names: list[str] | None = None,
        mode: Literal["finetune", "linear_probe"] = "finetune",
        optimizer: Optimizer | None = None,
        base_lr: float | None = None,
        lr: float | None = None,
        weight_decay: float | None = None,
        layer_decay: float | None = None,
        warmup_epochs: float | None = None,
        mixup: float | None = None,
        cutmix: float | None = None,
        label_smoothing: float | None = None,
        drop_path: float | None = None,
        ema_decay: float | None = None,
        loss: Literal["bce", "ce"] | None = None,
        strict_load: bool = True,
    ) -> None:
        super().__init__(backbone, init)
        self.save_hyperparameters()
        self.hparams.update(portable(dict(self.hparams)))  # no absolute path in checkpoints (docs/CORPUS.md)
        if mode not in RECIPES:
            raise ValueError(f"mode must be 'finetune' or 'linear_probe', got {mode!r}")
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {num_classes} classes")
        self.mode, self.num_classes = mode, num_classes
        self.recipe = RECIPES[mode].updated(
            optimizer=optimizer,
            base_lr=base_lr,
            weight_decay=weight_decay,
            layer_decay=layer_decay,
            warmup_epochs=warmup_epochs,
            mixup=mixup,
            cutmix=cutmix,
            label_smoothing=label_smoothing,
            drop_path=drop_path,
            ema_decay=ema_decay,
            loss=loss,
        )
        probe = mode == "linear_probe"
        self.model, self.load_report = create_backbone(
            backbone,
            init,
            num_classes=0 if probe else num_classes,
            strict=strict_load,
            drop_path_rate=self.recipe.drop_path,
        )
        self.head: nn.Module = ProbeHead(self.model.num_features, num_classes) if probe else nn.Identity()
        if probe:
            self.model.requires_grad_(False)
        self.mixup = self._make_mixup()
        self.criterion = BinaryCrossEntropy(smoothing=0.0) if self.recipe.loss == "bce" else SoftTargetCrossEntropy()
        self.ema = ModelEmaV3(self.network(), decay=self.recipe.ema_decay) if self.recipe.ema_decay > 0 else None
        if self.ema is not None:
            self.ema.requires_grad_(False)
        self._ema_step = 0
        self.lr_used: float | None = None
        self.metrics = nn.ModuleDict(
            {name: classification_metrics(num_classes) for name in ("val", "val_ema", "test", "test_ema")}
        )
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        self._test_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _make_mixup(self) -> Mixup:
        """SparK's mixup: mixup alpha `mixup`, cutmix alpha `cutmix`, one of the two per batch, smoothed targets."""
        r = self.recipe
        mixup = Mixup(
            mixup_alpha=r.mixup,
            cutmix_alpha=r.cutmix,
            prob=1.0,
            switch_prob=0.5,
            mode="batch",
            label_smoothing=r.label_smoothing,
            num_classes=self.num_classes,
        )
        mixup.mixup_enabled = r.mixup > 0  # SparK: mixup 0 turns cutmix off too
        return mixup

    def network(self) -> nn.Sequential:
        """Backbone (with its own classifier when fine-tuning) followed by the probe head (identity otherwise)."""
        return nn.Sequential(self.model, self.head)

    def train(self, mode: bool = True) -> ClassificationModule:
        super().train(mode)
        if self.mode == "linear_probe":
            self.model.eval()  # frozen features: BatchNorm keeps its pretrained running statistics
        return self

    def on_train_epoch_start(self) -> None:
        # Lightning does not call train() when fitting starts; set the probe's modes explicitly.
        self.train()

    def forward(self, image_b3hw: torch.Tensor) -> torch.Tensor:
        return self.head(self.model(image_b3hw))

    def soft_targets(self, image_b3hw: torch.Tensor, label_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed images and their (mixed, smoothed) one-hot targets; timm's Mixup needs an even batch, so an odd
        one is left unmixed."""
        if self.mixup.mixup_enabled and len(label_b) % 2 == 0:
            return self.mixup(image_b3hw, label_b)
        return image_b3hw, mixup_target(label_b, self.num_classes, lam=1.0, smoothing=self.recipe.label_smoothing)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        image_b3hw, target_bk = self.soft_targets(*batch)
        loss = self.criterion(self(image_b3hw).float(), target_bk)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(target_bk))
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None and self.global_step != self._ema_step:  # once per optimizer step
            self._ema_step = self.global_step
            self.ema.update(self.network())

    def configure_optimizers(self) -> Any:
        r = self.recipe
        self.lr_used = self.hparams.lr if self.hparams.lr is not None else scaled_lr(r.base_lr, self.trainer)
        optimizer = make_optimizer(r.optimizer, self.parameter_groups(self.lr_used), self.lr_used)
        return self.warmup_cosine(
            optimizer,
            warmup_epochs=r.warmup_epochs,
            warmup_start_ratio=r.warmup_start_ratio,
            min_lr_ratio=r.min_lr_ratio,
        )

    def parameter_groups(self, lr: float) -> list[dict]:
        """Layer-decay groups (SparK's layer map for ResNets, timm's grouping otherwise); the probe head alone."""
        r = self.recipe
        if self.mode == "linear_probe":
            layer_of, n = (lambda name: 0), 1
            return layer_decay_groups(
                self.head,
                lr=lr,
                weight_decay=r.weight_decay,
                layer_decay=1.0,
                layer_of=layer_of,
                num_layers=n,
                no_decay=spark_no_decay,
            )
        depths = resnet_depths(self.model)
        if depths is None and r.layer_decay != 1:
            groups = param_groups_layer_decay(self.model, weight_decay=r.weight_decay, layer_decay=r.layer_decay)
            return [dict(g, lr=lr * g["lr_scale"]) for g in groups]
        layer_of, n = classify_layer_id(depths, head_keys(self.backbone_name)) if depths else ((lambda name: 0), 1)
        return layer_decay_groups(
            self.model,
            lr=lr,
            weight_decay=r.weight_decay,
            layer_decay=r.layer_decay,
            layer_of=layer_of,
            num_layers=n,
            no_decay=spark_no_decay,
        )

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        image_b3hw, label_b = batch
        logits_bc = self(image_b3hw).float()
        self.log(f"{stage}/loss", F.cross_entropy(logits_bc, label_b), batch_size=len(label_b))
        probs_bc = logits_bc.softmax(dim=1)
        self.metrics[stage].update(probs_bc, label_b)
        if stage == "test":
            self.test_confusion.update(probs_bc, label_b)
            self._test_outputs.append((probs_bc.detach().cpu(), label_b.detach().cpu()))
        if self.ema is not None:
            self.metrics[f"{stage}_ema"].update(self.ema.module(image_b3hw).float().softmax(dim=1), label_b)

    def _compute(self, stage: str) -> dict[str, float]:
        """{metric: value} of the model, plus ema_<metric> for the EMA weights; resets the metrics."""
        names = [stage] + ([f"{stage}_ema"] if self.ema is not None else [])
        out = {}
        for name in names:
            prefix = "ema_" if name.endswith("_ema") else ""
            out.update({f"{prefix}{k}": float(v) for k, v in self.metrics[name].compute().items()})
            self.metrics[name].reset()
        return out

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        values = self._compute("val")
        self.log_dict(
            {("val_ema/" + k[4:] if k.startswith("ema_") else "val/" + k): v for k, v in values.items()}, prog_bar=True
        )

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_start(self) -> None:
        for name in ("test", "test_ema"):
            self.metrics[name].reset()
        self.test_confusion.reset()
        self._test_outputs = []

    def on_test_epoch_end(self) -> None:
        self.test_metrics_out = self._compute("test") | self._series_metrics()
        self.log_dict({f"test/{k}": v for k, v in self.test_metrics_out.items()})
        self.confusion_matrix = self.test_confusion.compute().cpu().numpy().astype(np.int64)

    def _series_metrics(self) -> dict[str, float]:
        """Per-series test metrics (`series_metrics`) when the data module names each test image's series and the
        test ran in one process (the loader's order is then the table's)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if not self._test_outputs or not hasattr(datamodule, "series_of") or self.trainer.world_size != 1:
            return {}
        series = datamodule.series_of("test")
        probs_nc = torch.cat([p for p, _ in self._test_outputs])
        target_n = torch.cat([t for _, t in self._test_outputs])
        if len(series) != len(target_n):
            raise RuntimeError(f"{len(target_n)} test predictions for {len(series)} test images")
        self.n_test_series = len(set(series))
        return series_metrics(probs_nc, target_n, series, self.num_classes)

    def results_details(self) -> dict[str, Any]:
        details = super().results_details()
        details.update(
            n_test_series=getattr(self, "n_test_series", None),
            mode=self.mode,
            recipe=self.recipe.as_dict(),
            lr=self.lr_used,
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
