"""Corpus + ROI cache as a LightningDataModule, with joint image/ROI augmentation and resumable randomness.

Images come out of the loader in [0, 1] (RoiDataset's contract); the mean/std normalisation happens in
`MaskedPretraining` on the training device, with the statistics this module computes at setup (`pixel_stats`:
the dataset's, as the MWM fork, or ImageNet's), so panels and metrics can use the raw batch.

Randomness: the training order is a permutation seeded by (seed, epoch), split across ranks like
DistributedSampler does; item i of epoch e is augmented under torch's RNG seeded by (seed, e, i). Data order
and augmentations are thus functions of the run's position, not of a generator's history: a resumed run sees
exactly the batches an uninterrupted run would see, whatever the number of workers. From a mid-epoch checkpoint
the sampler starts after the batches that epoch had already trained on (the position comes from the restored
fit loop, so the loader itself has nothing to save). Resuming on another number of devices splits the
permutation differently; that is warned about.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision.transforms import v2

from data.dataset import RoiDataset, unit_float
from data.intensity import IntensityConfig
from data.intensity_follow import follow_intensity, recorded_intensity, require_same_intensity
from data.packed_store import PackedStore
from data.portable import portable
from data.roi_cache import RoiCache, RoiShape
from data.slice_neighbours import InputChannels, check_input_channels
from data.splits import assign_group_splits, patient_groups, split_counts
from pretrain.pixel_stats import PixelStats, dataset_stats
from pretrain.seeding import derive_seed
from pretrain.transforms import Augment, Interpolation, eval_transform, square_resize, train_transform
from pretrain.transforms import resampling as resolve_resampling


class EpochSampler(DistributedSampler):
    """DistributedSampler yielding `(epoch, index)`, so that the dataset can seed each item's augmentation.

    Works without a process group when `num_replicas` and `rank` are given (one device: 1 and 0). Lightning
    keeps a DistributedSampler it is handed and calls `set_epoch` every epoch. `skip_next(n)` makes the next
    iteration start at this rank's n-th index of the epoch's permutation (a run resumed mid-epoch).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._skip = 0

    def skip_next(self, n_indices: int) -> None:
        self._skip = n_indices

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        epoch, skip, self._skip = self.epoch, self._skip, 0
        return ((epoch, int(i)) for i in list(super().__iter__())[skip:])


class ResumableLoader(DataLoader):
    """A DataLoader whose position Lightning may treat as restorable: it is set from the restored fit loop
    (`EpochSampler.skip_next`), so the state kept here only guards against resuming on another device count."""

    def state_dict(self) -> dict[str, int]:
        return {"num_replicas": getattr(self.sampler, "num_replicas", 1)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        now = getattr(self.sampler, "num_replicas", 1)
        if state.get("num_replicas", now) != now:
            rank_zero_warn(
                f"Resuming on {now} device(s) a run checkpointed on {state['num_replicas']}: the rest of "
                "the epoch is split differently, so the data order is not that of an uninterrupted run."
            )


class SeededItems(Dataset):
    """`dataset[i]` drawn under torch's CPU RNG seeded by (seed, epoch, i); keys are `(epoch, i)` or `i`.

    The global RNG is forked, not reseeded: the caller's generator state is untouched.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed also queues CUDA seeding, ~1 ms of stack capture per item
            torch.default_generator.manual_seed(derive_seed(self.seed, "augment", epoch, i))
            return self.dataset[i]


class RoiDataModule(pl.LightningDataModule):
    """Images of `corpus` with their ROI masks from the cache at `cache`, jointly augmented.

    Args:
        corpus: corpus root folder (paths in the manifest are relative to it).
        cache: ROI cache (Zarr store) made by `python -m localize run`.
        manifest: optional manifest file; default: the cache's own manifest (`RoiCache.manifest()`).
        packed: optional packed image store of the cache's items (`python -m data pack --cache ...` or
            `localize run --pack`): images are read from it, decoded once, instead of from the corpus files. A
            store made with other intensity rules than the run's is refused (docs/PACKING.md). A square store
            (`data pack --square N`) needs input_size N and augment "resize" with its reference resampling.
        input_size: square side fed to the model (linked to `model.input_size` by the CLI).
        global_batch_size: images per optimizer step over all devices (the MWM fork's `--bs`, 128); the
            per-device batch is derived from it at setup (divided by devices x nodes x gradient accumulation;
            a global batch that does not divide is refused).
        batch_size: per device, instead of `global_batch_size`; None (with no global batch either): 64. The
            module scales the learning rate by the effective batch.
        augment: "resize" (the MWM fork: resize to input_size², horizontal flip) or "random_resized_crop"
            (SparK: crop of `scale` area and `ratio` aspect, flip); see `pretrain.transforms`.
        scale, ratio: RandomResizedCrop area fraction and aspect ranges (SparK: 0.67-1, 3/4-4/3); hflip: flip
            probability; interpolation, antialias: None = the chosen reference's (bilinear without
            antialiasing for "resize", bicubic with it for "random_resized_crop").
        normalize: "dataset" (the MWM fork: mean of the per-image channel means and stds of `stats_images`
            training items, resized like the inputs) or "imagenet" (SparK). The numbers are
            logged, written to `pixel_stats.json` in the run folder and kept in the checkpoint.
        stats_sample: which `stats_images` items: "random" (a sample across series seeded by `seed`) or
            "first" (the fork: the first in manifest order, i.e. the first few series).
        roi_shape: "rect" (the expanded ROI: each component's filled bounding rectangle, what the MWM fork
            pretrains on, `masks_expanded/`) or "sam" (the refined mask itself).
        only_done: keep only items the localizer finished; False also trains on pending/failed items,
            whose ROI is then empty (they are masked like background).
        modalities: keep only these manifest modalities (e.g. ['MR']); None keeps all.
        intensity: `data.intensity.IntensityConfig` fields, e.g. {ct_window: lung, percentiles: [1, 99]};
            None (the default): the rules recorded in the cache's provenance by the localize run (else the store's,
            else the defaults), so both phases see the same images. Rules that differ from the cache's are warned
            about, naming the fields. The rules used are kept in the hparams (`intensity_used`, hence the
            checkpoint and the exported backbone's sidecar).
        val_fraction: share of patients held out for validation, whole (`validation_rows`: the manifest's
            patient_key, else each file its own patient); 0 disables validation. The patients and items per
            split are logged and kept in the hparams (`split_counts`).
        num_workers, persistent_workers, pin_memory (None: when training on a GPU): DataLoader settings.
        seed: seeds data order, augmentation and the validation split.
        input_channels: "2d" (the MWM release: a grey slice copied to the three channels) or "2.5d" (slices z-1, z,
            z+1 of the item's series, read by series order from the store or the files, edge slices repeated; the
            ROI is slice z's; `data.slice_neighbours`). Kept in the hparams, hence recorded by the export
            (`input.channels` in its sidecar), and fine-tuning refuses a backbone of the other convention.
    """

    def __init__(
        self,
        corpus: str | Path,
        cache: str | Path,
        manifest: str | Path | None = None,
        packed: str | Path | None = None,
        input_size: int = 224,
        global_batch_size: int | None = None,
        batch_size: int | None = None,
        augment: Augment = "resize",
        scale: tuple[float, float] = (0.67, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        interpolation: Interpolation | None = None,
        antialias: bool | None = None,
        normalize: Literal["dataset", "imagenet"] = "dataset",
        stats_images: int = 1000,
        stats_sample: Literal["random", "first"] = "random",
        roi_shape: RoiShape = "rect",
        only_done: bool = True,
        modalities: list[str] | None = None,
        intensity: dict[str, Any] | None = None,
        val_fraction: float = 0.0,
        num_workers: int = 8,
        persistent_workers: bool = True,
        pin_memory: bool | None = None,
        seed: int = 0,
        input_channels: InputChannels = "2d",
    ) -> None:  # pragma: no mutate block
        # (mutmut runs a mutated method from a copy outside the class, where Lightning's `save_hyperparameters`
        # finds no constructor frame and records nothing: every test would fail. Checked by the kill tests instead.)
        super().__init__()
        check_input_channels(input_channels)
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if global_batch_size is not None and batch_size is not None:
            raise ValueError("set data.global_batch_size or data.batch_size (per device), not both")
        if normalize not in ("dataset", "imagenet"):
            raise ValueError(f"normalize must be 'dataset' or 'imagenet', got {normalize!r}")
        # paths as plain strings: checkpoints stay loadable with torch.load(weights_only=True)
        self.save_hyperparameters(ignore=["corpus", "cache", "manifest", "packed"])
        self.hparams.update(corpus=str(corpus), cache=str(cache), manifest=None if manifest is None else str(manifest))
        self.hparams.update(packed=None if packed is None else str(packed))
        self.hparams.update(portable(dict(self.hparams)))  # no absolute path in checkpoints (docs/CORPUS.md)
        self.corpus, self.cache_path = Path(corpus), Path(cache)
        self.manifest_path = None if manifest is None else Path(manifest)
        self.packed_path = None if packed is None else str(packed)  # a path, or a URL (docs/PACKING.md)
        self.batch_size = batch_size if batch_size is not None or global_batch_size is not None else 64
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.pixel_stats: PixelStats | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        if hp.global_batch_size is not None:
            self.batch_size = per_device_batch(hp.global_batch_size, self.trainer)
        if not self.cache_path.exists():
            raise FileNotFoundError(f"{self.cache_path}: no ROI cache here; make one with `python -m localize run`")
        cache = RoiCache.open(self.cache_path, mode="r")
        packed = PackedStore.open(self.packed_path) if self.packed_path is not None else None
        if packed is not None and packed.square is not None:
            check_square_store(packed, hp.input_size, hp.augment, hp.interpolation, hp.antialias)
        intensity = self._intensity(cache, packed)
        # a square uint8 store at the input size is only flipped: its images cross to the device as uint8
        integer = packed is not None and packed.square == hp.input_size and packed.dtype == "uint8"

        def dataset(transform: v2.Transform | None, integer_images: bool = False) -> RoiDataset:
            return RoiDataset(
                self.corpus,
                self.manifest_path,
                cache,
                transform=transform,
                intensity=intensity,
                only_done=hp.only_done,
                modalities=hp.modalities,
                roi_shape=hp.roi_shape,
                packed=packed,
                integer_images=integer_images,
                input_channels=hp.input_channels,
            )

        resampling = {"interpolation": hp.interpolation, "antialias": hp.antialias}
        train_full = dataset(
            train_transform(hp.input_size, hp.augment, scale=hp.scale, ratio=hp.ratio, hflip=hp.hflip, **resampling),
            integer,
        )
        if len(train_full) == 0:
            what = "done" if hp.only_done else "selected"
            raise ValueError(
                f"{self.cache_path}: no {what} items to train on (localize the corpus first, "
                "or set data.only_done false to train on every item with an empty ROI)"
            )
        rows = train_full.manifest.iloc[train_full.indices]
        is_val = validation_rows(rows, hp.val_fraction, hp.seed)
        if is_val.all():
            raise ValueError(
                f"{self.cache_path}: val_fraction {hp.val_fraction} leaves no training item out of {len(rows)}"
            )
        if hp.val_fraction > 0 and not is_val.any():
            rank_zero_warn(f"val_fraction {hp.val_fraction} selects none of {len(rows)} items' patients: no validation")
        self.hparams["split_counts"] = split_counts(patient_groups(rows), np.where(is_val, "val", "train"))
        rank_zero_info(f"pretraining splits (patients / items): {self.hparams['split_counts']}")
        train_items = np.flatnonzero(~is_val).tolist()
        self.train_set = Subset(train_full, train_items)
        if is_val.any():
            self.val_set = Subset(
                dataset(eval_transform(hp.input_size, hp.augment, **resampling), integer),
                np.flatnonzero(is_val).tolist(),
            )
        if hp.normalize == "dataset":
            resized = Subset(dataset(square_resize(hp.input_size, hp.augment, **resampling)), train_items)
            self.pixel_stats = dataset_stats(
                resized, hp.stats_images, num_workers=hp.num_workers, sample=hp.stats_sample, seed=hp.seed
            )
        else:
            self.pixel_stats = PixelStats.imagenet()
        self._record_pixel_stats()

    def _intensity(self, cache: RoiCache, packed: PackedStore | None) -> IntensityConfig:
        """The run's intensity rules: its own, else the cache's, else the store's (see `intensity`); a packed store
        of other rules is refused. Kept in the hparams as `intensity_used`."""
        recorded, where = recorded_intensity(cache.provenance), f"the ROI cache {self.cache_path}"
        if recorded is None and packed is not None:  # e.g. a cache of imported masks: the store's rules
            recorded, where = packed.intensity, f"the packed store {self.packed_path}"
        intensity = follow_intensity(self.hparams.intensity, recorded, where)
        if packed is not None:
            require_same_intensity(intensity, packed.intensity, str(self.packed_path))
        self.hparams["intensity_used"] = intensity.to_dict()
        return intensity

    def _record_pixel_stats(self) -> None:
        """The statistics as numbers: in this module's hparams (hence the checkpoint) and in the run's log folder.
        Without a logger there is no run folder (Lightning's log_dir would be the working directory): hparams only."""
        stats = self.pixel_stats.as_dict()
        self.hparams["pixel_stats"] = stats
        trainer = self.trainer
        if trainer is None or not trainer.loggers:
            return
        log_dir = trainer.log_dir  # every rank asks: log_dir broadcasts
        if log_dir is not None and trainer.is_global_zero:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            (Path(log_dir) / "pixel_stats.json").write_text(json.dumps(stats, indent=2))

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Images in [0, 1] as float32 from here on: uint8 batches (a square store's) are converted on the device."""
        batch["image"] = unit_float(batch["image"])
        return batch

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return [] if self.val_set is None else self._loader(self.val_set, shuffle=False)

    def _loader(self, items: Dataset | None, *, shuffle: bool) -> DataLoader:
        if items is None:
            raise RuntimeError("RoiDataModule.setup() has not run")
        hp = self.hparams
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        n_items = len(items)
        if shuffle and math.ceil(n_items / world) < self.batch_size:
            raise ValueError(
                f"{self.cache_path}: {n_items} training items over {world} device(s) do not fill "
                f"one batch of {self.batch_size}; lower data.batch_size"
            )
        sampler = EpochSampler(items, num_replicas=world, rank=rank, shuffle=shuffle, seed=hp.seed)
        sampler.set_epoch(_epoch_to_run(trainer) if shuffle else 0)
        if shuffle:
            sampler.skip_next(_batches_done_in_epoch(trainer) * self.batch_size)
        on_gpu = trainer is not None and trainer.strategy.root_device.type == "cuda"
        return (ResumableLoader if shuffle else DataLoader)(
            SeededItems(items, hp.seed),
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=hp.num_workers,
            persistent_workers=hp.persistent_workers and hp.num_workers > 0,
            pin_memory=on_gpu if hp.pin_memory is None else hp.pin_memory,
            drop_last=shuffle,  # equal batches for training (BatchNorm); every item for validation
        )


def validation_rows(rows: pd.DataFrame, val_fraction: float, seed: int) -> np.ndarray:
    """Which of these manifest rows (the selected training items) pretraining holds out for validation (bool):
    `val_fraction` of their patients, whole, drawn by `data.splits.assign_group_splits` with `seed`. Shared with
    the study's calibration (study.matched), which must see exactly the training items."""
    if val_fraction == 0:
        return np.zeros(len(rows), dtype=bool)
    groups = patient_groups(rows)
    return assign_group_splits(groups, seed=seed, val_share=val_fraction, test_share=0.0) == "val"


def check_square_store(
    packed: PackedStore, input_size: int, augment: Augment, interpolation: str | None, antialias: bool | None
) -> None:
    """Refuse a square store unless the run resizes to its side the way it was packed: its images skip that resize
    (`data.packed_store.square_resize`, the "resize" reference's bilinear without antialiasing)."""
    how = resolve_resampling(augment, interpolation, antialias)
    if packed.square == input_size and augment == "resize" and how == ("bilinear", False):
        return
    raise ValueError(
        f"{packed.path}: a square packed store holds images already resized to {packed.square} x {packed.square} "
        f"(bilinear, no antialiasing), for augment 'resize' at input_size {packed.square}; this run has input_size "
        f"{input_size}, augment {augment!r}, resampling {how}. Pack a store for this run (`python -m data pack "
        f"--square {input_size}` for augment 'resize', without --square otherwise), or drop data.packed."
    )


def per_device_batch(global_batch: int, trainer: pl.Trainer | None) -> int:
    """`global_batch` / (devices x nodes x gradient accumulation); refused unless it divides exactly."""
    world = trainer.world_size if trainer is not None else 1
    accumulate = trainer.accumulate_grad_batches if trainer is not None else 1
    parts = world * accumulate
    if global_batch < 1 or global_batch % parts:
        raise ValueError(
            f"data.global_batch_size {global_batch} is not divisible by {world} device(s) x {accumulate} "
            f"gradient accumulation step(s); use a multiple of {parts}, or set data.batch_size per device"
        )
    return global_batch // parts


def _epoch_to_run(trainer: pl.Trainer | None) -> int:
    """The epoch the fit loop will run next: the one it passes to `set_epoch`.

    Worker processes draw their first indices as soon as the loader's iterator exists, and Lightning makes
    that iterator before it calls `set_epoch` (on a resumed run: right after restoring the loops, which is
    when it asks for this loader; the module takes care not to ask earlier). A resumed run must therefore
    start the sampler at the right epoch itself. `current_epoch` would be one short after an end-of-epoch
    checkpoint (the epoch was processed, not yet marked completed).
    """
    if trainer is None:
        return 0
    return trainer.fit_loop.epoch_progress.current.processed


def _batches_done_in_epoch(trainer: pl.Trainer | None) -> int:
    """Training batches the epoch to run has already been through: nonzero only for a run restored from a
    checkpoint saved inside an epoch (after a batch, or after a validation run within the epoch)."""
    if trainer is None:
        return 0
    epochs = trainer.fit_loop.epoch_progress.current
    if epochs.started <= epochs.processed:  # between epochs: a fresh run or an end-of-epoch checkpoint
        return 0
    return trainer.fit_loop.epoch_loop.batch_progress.current.processed
