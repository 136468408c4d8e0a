"""What every fine-tuning task shares: the lr schedule, the test outcome the CLI writes, data bookkeeping."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info
from torch.optim import Optimizer
from torch.utils.data import DataLoader, Dataset

from data.intensity_follow import follow_intensity, recorded_intensity, require_same_intensity
from data.manifest import read_manifest
from data.packed_store import PackedStore
from data.provenance import code_version
from data.slice_neighbours import check_input_channels
from data.splits import SPLITS, patient_groups, split_counts
from finetune.backbone import PRETRAINED, InitSpec, LoadReport
from finetune.data import NeighbourSlices, stratified_subset, under_root
from pretrain.export import input_convention, read_sidecar
from pretrain.schedules import WarmupCosineSchedule, effective_batch_size, set_run_horizon


class FinetuneTask(pl.LightningModule):
    """Base of the task modules: the run's batch and step counts, the shared warm-up + cosine schedule.

    Subclasses set `task`, `backbone_name`, `load_report`, build their optimizer in `configure_optimizers`, and fill
    `test_metrics_out` (name -> float) at the end of testing; the CLI turns those into the run's results JSON.
    """

    task: str = ""

    def __init__(self, backbone: str, init: str) -> None:
        super().__init__()
        self.backbone_name = backbone
        self.init = init
        self.load_report: LoadReport | None = None
        self.test_metrics_out: dict[str, float] = {}

    def effective_batch_size(self) -> int:
        """Images per optimizer step (`pretrain.schedules.effective_batch_size`), the lr-scaling batch."""
        return effective_batch_size(self.trainer)

    def warmup_cosine(
        self,
        optimizer: Optimizer,
        *,
        warmup_epochs: float = 0.0,
        warmup_steps: int = 0,
        warmup_start_ratio: float,
        min_lr_ratio: float,
    ) -> dict[str, Any]:
        """Lightning's optimizer config with the project's one warm-up + cosine schedule (pretrain.schedules), per
        optimizer step: linear from `warmup_start_ratio`·lr over warmup_steps + warmup_epochs' steps, then cosine
        down to `min_lr_ratio`·lr at the end of the run. The horizon is fixed in on_train_start, once the trainer
        knows its batches (as pretraining does, so a resumed run keeps its curve)."""
        self._warmup = (warmup_epochs, warmup_steps)
        schedule = WarmupCosineSchedule(optimizer, warmup_start_ratio=warmup_start_ratio, min_lr_ratio=min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_train_start(self) -> None:
        schedule = self.lr_schedulers()
        if isinstance(schedule, WarmupCosineSchedule):
            warmup_epochs, warmup_steps = getattr(self, "_warmup", (0.0, 0))
            set_run_horizon(self.trainer, schedule, warmup_epochs, warmup_steps)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["code_version"] = code_version()  # the code that wrote it (data.provenance)

    def results_details(self) -> dict[str, Any]:
        """Task-specific extras for the results JSON."""
        return {"load_report": self.load_report.summary() if self.load_report else None}

    def write_artifacts(self, out_dir: Path, stem: str) -> dict[str, str]:
        """Write task-specific files next to the results JSON; return {kind: path}."""
        return {}


class FinetuneData(pl.LightningDataModule):
    """Base of the task data modules: the train-fraction subset and the sizes the results JSON reports."""

    def __init__(
        self,
        train_fraction: float,
        subset_seed: int,
        intensity: dict[str, Any] | None = None,
        packed: str | None = None,
        init: str | None = None,
        input_channels: str = "2d",
    ) -> None:
        """intensity: data.intensity.IntensityConfig fields; None: the rules recorded with the data, so the backbone
        sees the images it was pretrained on: the packed store's (`packed`), else those the pretraining of an
        exported backbone used (`init`, the model's, linked by the CLI), else the defaults. Set rules that differ
        are warned about; a packed store of other rules is refused.
        input_channels: "2d" (a grey image copied to the three channels) or "2.5d" (slices z-1, z, z+1 of its
        series, `data.slice_neighbours`; needs the corpus manifest). An exported backbone pretrained with the other
        convention (its sidecar's `input.channels`, "2d" when absent) is refused."""
        super().__init__()
        self.input_channels = check_input_channels(input_channels)
        if init and InitSpec.parse(init).kind == PRETRAINED:
            recorded_channels = input_convention(read_sidecar(InitSpec.parse(init).path))
            if recorded_channels != input_channels:
                raise ValueError(
                    f"{init}: the backbone was pretrained on '{recorded_channels}' input (its sidecar's input.channels)"
                    f", but data.input_channels is '{input_channels}'; set data.input_channels: {recorded_channels}"
                )
        self.packed = PackedStore.open(packed) if packed else None
        if self.packed is not None and self.packed.square is not None:
            raise ValueError(
                f"{packed}: a square packed store (every image resized to {self.packed.square} x "
                f"{self.packed.square}, aspect lost) serves pretraining only; fine-tuning's transforms need each "
                "image's own aspect. Pack a store without --square for fine-tuning, or read the files (no packed)."
            )
        recorded, where = None, ""
        if self.packed is not None:
            recorded, where = self.packed.intensity, f"the packed store {packed}"
        elif init and InitSpec.parse(init).kind == PRETRAINED:
            sidecar = read_sidecar(InitSpec.parse(init).path) or {}
            recorded, where = recorded_intensity(sidecar), f"the export record of {init}"
        self.intensity = follow_intensity(intensity, recorded, where)
        if self.packed is not None:
            require_same_intensity(self.intensity, self.packed.intensity, str(packed))
        if not 0 < train_fraction <= 1:
            raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction}")
        self.train_fraction = train_fraction
        self.subset_seed = subset_seed

    def slice_neighbours(self, root: Path, manifest: str | None) -> NeighbourSlices | None:
        """The neighbouring slices 2.5-D input reads (None for "2d"), from the corpus manifest (relative: under
        `root` first), which "2.5d" needs: the series and slice order are the scan's."""
        if self.input_channels == "2d":
            return None
        if manifest is None:
            raise ValueError("data.input_channels '2.5d' needs data.manifest (the scan's series and slice order)")
        return NeighbourSlices(read_manifest(under_root(root, manifest)))

    # Subclasses set these and implement split_size / split_dataset; the loaders below are shared.
    split_record: dict[str, dict[str, int]] | None = None
    batch_size: int
    num_workers: int
    collate_fn: Callable | None = None
    drop_last_train: bool = True

    def collate_for(self, split: str) -> Callable | None:
        """The loader's collate function for `split` (one for all splits unless a task needs otherwise)."""
        return self.collate_fn

    def split_tables(self, table: pd.DataFrame) -> dict[str, pd.DataFrame]:
        """Rows per split ('split' column); the training rows reduced to the seeded train-fraction subset of whole
        patients, stratified by 'label'. Records the patients and items per split (`split_record`)."""
        train = table[table["split"] == "train"].reset_index(drop=True)
        if train.empty:
            raise ValueError("the training split is empty")
        subset = stratified_subset(train["label"], self.train_fraction, self.subset_seed, patient_groups(train))
        tables = {
            "train": train.iloc[subset].reset_index(drop=True),
            "val": table[table["split"] == "val"].reset_index(drop=True),
            "test": table[table["split"] == "test"].reset_index(drop=True),
        }
        self.record_splits({name: patient_groups(rows) for name, rows in tables.items()})
        return tables

    def record_splits(self, groups_per_split: dict[str, Sequence[str]]) -> None:
        """Keep {split: {patients, items}} of the splits used (the results JSON's details.splits) and log it."""
        groups = [g for name in SPLITS for g in groups_per_split[name]]
        names = [name for name in SPLITS for _ in groups_per_split[name]]
        self.split_record = split_counts(groups, names)
        rank_zero_info(f"splits (patients / items): {self.split_record}")

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
            collate_fn=self.collate_for(split),
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
