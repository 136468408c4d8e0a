"""Image-report pairs on top of the pretraining data module: every item gets its report's token ids and a
`paired` flag; everything else (ROI cache, joint augmentation, seeded order, exact mid-epoch resume) is
`RoiDataModule`'s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import Dataset, Subset

from data.reports import read_report_table, reports_for_manifest
from pretrain.datamodule import RoiDataModule
from pretrain.maskedclip.tokenizer import ReportTokenizer


class PairedItems(Dataset):
    """Items of `items` (RoiDataset items, or a Subset of them) plus `text_ids` (context_length,) int64 and
    `paired` (bool). Reports are looked up by the item's manifest row (`index`) and tokenised here, in the
    loader workers; the report text itself never enters the batch."""

    def __init__(self, items: Dataset, reports: np.ndarray, tokenizer: ReportTokenizer) -> None:
        self.items = items
        self.reports = reports
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.items)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.items[i]
        report = self.reports[item["index"]]
        paired = report is not None
        text_ids = self.tokenizer([report])[0] if paired else self.tokenizer.empty()
        return {**item, "text_ids": text_ids, "paired": torch.tensor(paired)}


class PairedDataModule(RoiDataModule):
    """`RoiDataModule` whose items carry report tokens from the table at `reports` (see `data.reports`).

    Args:
        reports: table of `path, frame, report` (CSV or parquet), joined to the manifest by (path, frame);
            manifest items without a row are unpaired; None = no item is paired (L_CLIP never runs).
        text_model, context_length: the tokenizer (see `ReportTokenizer`); the CLI links them to the model's.
        everything else: `RoiDataModule`'s arguments.
    """

    def __init__(
        self,
        corpus: str | Path,
        cache: str | Path,
        reports: str | Path | None = None,
        text_model: str | None = None,
        context_length: int = 256,
        **kwargs: Any,
    ) -> None:
        super().__init__(corpus, cache, **kwargs)
        # plain strings in the hyper-parameters: a path, never report text
        self.hparams.update(reports=None if reports is None else str(reports))
        self.reports_path = None if reports is None else Path(reports)
        self.tokenizer = ReportTokenizer(text_model, context_length)

    def setup(self, stage: str | None = None) -> None:
        if isinstance(self.train_set, PairedItems):
            return
        super().setup(stage)
        manifest = _manifest_of(self.train_set)
        if self.reports_path is None:
            reports = np.full(len(manifest), None, dtype=object)
            rank_zero_warn("MaskedCLIP data: no report table (data.reports): no image is paired, L_CLIP never runs")
        else:
            reports = reports_for_manifest(manifest, read_report_table(self.reports_path), self.reports_path)
        self.train_set = PairedItems(self.train_set, reports, self.tokenizer)
        if self.val_set is not None:
            self.val_set = PairedItems(self.val_set, reports, self.tokenizer)
        indices = _manifest_rows(self.train_set.items)
        n_paired = sum(reports[i] is not None for i in indices)
        rank_zero_info(f"MaskedCLIP data: {n_paired} of {len(indices)} training images have a report")


def _manifest_of(items: Dataset) -> Any:
    """The manifest of the RoiDataset under (possibly nested) Subsets."""
    while isinstance(items, Subset):
        items = items.dataset
    return items.manifest


def _manifest_rows(items: Dataset) -> list[int]:
    """Manifest rows of the items of a Subset of a RoiDataset (without loading images)."""
    positions = list(range(len(items)))  # type: ignore[arg-type]
    while isinstance(items, Subset):
        positions = [items.indices[p] for p in positions]
        items = items.dataset
    return [int(items.indices[p]) for p in positions]
