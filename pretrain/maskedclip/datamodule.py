"""Image-report pairs on top of the pretraining data module: every item gets its report's token ids and a
`paired` flag; everything else (ROI cache, joint augmentation, seeded order, exact mid-epoch resume) is
`RoiDataModule`'s, except the training order with `images_per_study`: batches of K images per study
(`StudyBatchSampler`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset, Subset

from data.portable import portable_path
from data.reports import read_report_table, report_sections, reports_for_manifest, studies_for_manifest
from pretrain.datamodule import ResumableLoader, RoiDataModule, SeededItems, _batches_done_in_epoch, _epoch_to_run
from pretrain.maskedclip.study_sampler import KeyedBatches, StudyBatchSampler
from pretrain.maskedclip.tokenizer import ReportTokenizer


class PairedItems(Dataset):
    """Items of `items` (RoiDataset items, or a Subset of them) plus `text_ids` (context_length,) int64, `paired`
    (bool) and the pair's keys for L_CLIP's negatives: `report_group` (the same number for the same report text,
    -1 unpaired) and `study_group` (the same number for items of one study). Reports are looked up by the item's
    manifest row (`index`) and tokenised here, in the loader workers; the report text itself never enters the
    batch."""

    def __init__(
        self, items: Dataset, reports: np.ndarray, tokenizer: ReportTokenizer, studies: np.ndarray | None = None
    ) -> None:
        self.items = items
        self.reports = reports
        self.tokenizer = tokenizer
        self.report_groups = report_groups(reports)
        # numbers, not the keys: a batch carries no study key either
        studies = np.arange(len(reports)).astype(str) if studies is None else studies
        self.study_groups = np.unique(studies, return_inverse=True)[1].astype(np.int64)

    def __len__(self) -> int:
        return len(self.items)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.items[i]
        row = item["index"]
        report = self.reports[row]
        paired = report is not None
        text_ids = self.tokenizer([report])[0] if paired else self.tokenizer.empty()
        return {
            **item,
            "text_ids": text_ids,
            "paired": torch.tensor(paired),
            "report_group": torch.tensor(self.report_groups[row]),
            "study_group": torch.tensor(self.study_groups[row]),
        }


def report_groups(reports: np.ndarray) -> np.ndarray:
    """Per manifest row, a number shared by the rows of one report text (whitespace-normalised, as tokenised),
    -1 for rows without a report: pairs of one text must not be each other's negatives."""
    groups = np.full(len(reports), -1, dtype=np.int64)
    paired = np.flatnonzero([r is not None for r in reports])
    if len(paired):
        texts = np.array([" ".join(str(reports[i]).split()) for i in paired], dtype=object)
        groups[paired] = np.unique(texts, return_inverse=True)[1]
    return groups


def truncated_share(tokenizer: ReportTokenizer, reports: np.ndarray) -> tuple[int, int]:
    """(distinct reports longer than the context length, distinct reports): such reports lose their end."""
    texts = sorted({str(r) for r in reports if r is not None})
    if not texts:
        return 0, 0
    lengths = tokenizer.lengths(texts)
    return int(sum(n > tokenizer.context_length for n in lengths)), len(texts)


class PairedDataModule(RoiDataModule):
    """`RoiDataModule` whose items carry report tokens from the table at `reports` (see `data.reports`).

    Args:
        reports: table of `path, frame, report` (CSV or parquet), joined to the manifest by (path, frame);
            manifest items without a row are unpaired; None = no item is paired (L_CLIP never runs).
        text_model, context_length: the tokenizer (see `ReportTokenizer`); the CLI links them to the model's.
        report_sections: e.g. [impression, findings]: only these sections of each report are tokenised, in this
            order (`data.reports.report_sections`; a report without any is kept whole); None: the whole report.
        images_per_study: K: each training batch holds batch_size / K studies with K images each (fewer when a
            study has fewer), drawn without replacement, studies shuffled per epoch (`StudyBatchSampler`); a
            study is the report table's or manifest's `study_key`, else the image's file. None (the default):
            batches drawn at random over images, as `RoiDataModule`'s.
        everything else: `RoiDataModule`'s arguments.
    """

    def __init__(
        self,
        corpus: str | Path,
        cache: str | Path,
        reports: str | Path | None = None,
        text_model: str | None = None,
        context_length: int = 256,
        report_sections: list[str] | None = None,
        images_per_study: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(corpus, cache, **kwargs)
        if images_per_study is not None and images_per_study < 1:
            raise ValueError(f"data.images_per_study must be >= 1 or null, got {images_per_study}")
        self.images_per_study = images_per_study
        self.train_studies: np.ndarray | None = None
        self.report_sections = tuple(report_sections) if report_sections else None
        # plain strings in the hyper-parameters: a path, never report text
        self.hparams.update(reports=None if reports is None else portable_path(reports))
        self.reports_path = None if reports is None else Path(reports)
        self.tokenizer = ReportTokenizer(text_model, context_length)

    def setup(self, stage: str | None = None) -> None:
        if isinstance(self.train_set, PairedItems):
            return
        super().setup(stage)
        manifest = _manifest_of(self.train_set)
        table = None
        if self.reports_path is None:
            reports = np.full(len(manifest), None, dtype=object)
            rank_zero_warn("MaskedCLIP data: no report table (data.reports): no image is paired, L_CLIP never runs")
        else:
            table = read_report_table(self.reports_path)
            reports = reports_for_manifest(manifest, table, self.reports_path)
            if self.report_sections is not None:
                order = self.report_sections
                reports = np.array([None if r is None else report_sections(r, order) for r in reports], dtype=object)
        studies = studies_for_manifest(manifest, table)
        self.train_set = PairedItems(self.train_set, reports, self.tokenizer, studies)
        if self.val_set is not None:
            self.val_set = PairedItems(self.val_set, reports, self.tokenizer, studies)
        indices = _manifest_rows(self.train_set.items)
        self.train_studies = studies[indices]
        n_paired = sum(reports[i] is not None for i in indices)
        n_studies = len({studies[i] for i in indices if reports[i] is not None})
        rank_zero_info(
            f"MaskedCLIP data: {n_paired} of {len(indices)} training images have a report ({n_studies} studies)"
        )
        truncated, distinct = truncated_share(self.tokenizer, reports)
        self.truncated_report_share = truncated / distinct if distinct else 0.0
        if distinct:  # counts only: never a report's words
            rank_zero_info(
                f"MaskedCLIP data: {truncated} of {distinct} distinct reports ({self.truncated_report_share:.1%}) are "
                f"longer than the context length {self.tokenizer.context_length} tokens and are truncated"
            )

    def train_dataloader(self) -> DataLoader:
        if self.images_per_study is None:
            return super().train_dataloader()
        return self._study_loader()

    def _study_loader(self) -> DataLoader:
        """Batches of `images_per_study` images per study: the sampler yields whole batches (`StudyBatchSampler`),
        set to the epoch to run and past the batches a resumed epoch already trained on, as `RoiDataModule`'s."""
        if self.train_set is None or self.train_studies is None:
            raise RuntimeError("PairedDataModule.setup() has not run")
        hp = self.hparams
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = StudyBatchSampler(self.train_studies, self.images_per_study, self.batch_size, world, rank, hp.seed)
        sampler.set_epoch(_epoch_to_run(trainer))
        sampler.skip_next(_batches_done_in_epoch(trainer))
        on_gpu = trainer is not None and trainer.strategy.root_device.type == "cuda"
        return ResumableLoader(
            KeyedBatches(SeededItems(self.train_set, hp.seed)),
            batch_size=None,  # the sampler's items are batches
            sampler=sampler,
            num_workers=hp.num_workers,
            persistent_workers=hp.persistent_workers and hp.num_workers > 0,
            pin_memory=on_gpu if hp.pin_memory is None else hp.pin_memory,
        )


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
