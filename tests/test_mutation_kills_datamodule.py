"""Sharper tests of pretrain/datamodule.py, written for the mutants `make mutate MODULE=pretrain/datamodule.py` left
alive: the loaders' settings, the resume position, the per-item seeding, the argument checks and setup's refusals.

The loaders are checked against a stand-in trainer (world size, rank, device, fit-loop progress) instead of a
Lightning run; expected values are hand-made (seeds derived by `pretrain.seeding.derive_seed` as documented, the
permutation split as DistributedSampler does).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import InterpolationMode, v2

from data.intensity import IntensityConfig
from data.packed_store import PackedStore
from data.packing import pack_corpus
from data.roi_cache import RoiCache
from data.splits import assign_group_splits
from pretrain.datamodule import (
    EpochSampler,
    ResumableLoader,
    RoiDataModule,
    SeededItems,
    _batches_done_in_epoch,
    _epoch_to_run,
    check_square_store,
    per_device_batch,
    validation_rows,
)
from pretrain.pixel_stats import PixelStats
from pretrain.seeding import derive_seed
from tests.pretrain_lightning_fixtures import write_roi_corpus


def fake_trainer(
    world: int = 1,
    rank: int = 0,
    device: str = "cpu",
    started: int = 0,
    processed: int = 0,
    batches: int = 0,
    accumulate: int = 1,
    log_dir: str | None = None,
    global_zero: bool = True,
) -> SimpleNamespace:
    """What the module reads from a Trainer: world size and rank, the device, the fit loop's progress, the logs."""
    epochs = SimpleNamespace(current=SimpleNamespace(started=started, processed=processed))
    batch_progress = SimpleNamespace(current=SimpleNamespace(processed=batches))
    return SimpleNamespace(
        world_size=world,
        global_rank=rank,
        accumulate_grad_batches=accumulate,
        strategy=SimpleNamespace(root_device=torch.device(device)),
        fit_loop=SimpleNamespace(epoch_progress=epochs, epoch_loop=SimpleNamespace(batch_progress=batch_progress)),
        loggers=[object()] if log_dir is not None else [],
        log_dir=log_dir,
        is_global_zero=global_zero,
    )


def module(**overrides) -> RoiDataModule:
    args = dict(input_size=32, batch_size=2, num_workers=0, seed=3)
    return RoiDataModule("corpus", "cache.zarr", **{**args, **overrides})


# ------------------------------------------------------------------------------------------------ loaders
def test_the_training_loader_shards_skips_and_seeds_as_the_trainer_says():
    dm = module(batch_size=3, num_workers=2, persistent_workers=True, pin_memory=None)
    dm.train_set = list(range(20))
    # rank 1 of 2, epoch 4 started but not processed (a mid-epoch checkpoint) after 2 batches of it
    dm.trainer = fake_trainer(world=2, rank=1, started=5, processed=4, batches=2)
    loader = dm.train_dataloader()
    assert type(loader) is ResumableLoader and loader.batch_size == 3 and loader.drop_last
    assert loader.num_workers == 2 and loader.persistent_workers and not loader.pin_memory
    sampler = loader.sampler
    assert isinstance(sampler, EpochSampler)
    assert (sampler.num_replicas, sampler.rank, sampler.shuffle, sampler.seed, sampler.epoch) == (2, 1, True, 3, 4)
    # DistributedSampler's split: the epoch's permutation (seed + epoch), rank 1 takes every second index from 1
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(3 + 4)).tolist()
    assert list(sampler) == [(4, i) for i in perm[1::2][6:]]  # 2 batches of 3 done
    assert list(sampler) == [(4, i) for i in perm[1::2]]  # the skip is for one iteration only
    assert (
        isinstance(loader.dataset, SeededItems)
        and loader.dataset.seed == 3
        and loader.dataset.dataset == list(range(20))
    )


def test_the_validation_loader_keeps_every_item_in_order():
    dm = module(batch_size=4, num_workers=0, persistent_workers=True)
    assert dm.val_dataloader() == []  # no validation set
    dm.val_set = list(range(10))
    dm.trainer = fake_trainer(device="cuda", started=3, processed=2, batches=5)
    loader = dm.val_dataloader()
    assert type(loader) is DataLoader and not loader.drop_last and loader.pin_memory  # on a GPU: pinned
    assert not loader.persistent_workers  # no workers to keep
    assert loader.sampler.epoch == 0 and not loader.sampler.shuffle
    assert [i for _, i in loader.sampler] == list(range(10))  # no skip either
    assert sum(len(b) for b in loader) == 10


def test_loader_without_a_trainer_and_an_explicit_pin_memory():
    dm = module(batch_size=2, pin_memory=True)
    with pytest.raises(RuntimeError, match="^RoiDataModule.setup\\(\\) has not run$"):
        dm.train_dataloader()
    dm.train_set = list(range(5))
    loader = dm.train_dataloader()
    assert loader.pin_memory and loader.sampler.num_replicas == 1 and loader.sampler.rank == 0
    assert [i for _, i in loader.sampler] == torch.randperm(5, generator=torch.Generator().manual_seed(3)).tolist()
    one_worker = module(num_workers=1, persistent_workers=True)
    one_worker.train_set = list(range(4))
    assert one_worker.train_dataloader().persistent_workers  # one worker is kept too


@pytest.mark.parametrize(
    ("n_items", "world", "batches"), [(4, 2, 1), (3, 2, 1), (2, 2, None), (2, 1, 1), (5, 1, 2), (1, 1, None)]
)
def test_a_training_set_must_fill_one_batch_per_device(n_items, world, batches):
    """ceil(items / devices) >= batch: DistributedSampler pads a rank's share up to the ceiling."""
    dm = module(batch_size=2)
    dm.train_set = list(range(n_items))
    dm.trainer = fake_trainer(world=world)
    if batches is not None:
        assert len(dm.train_dataloader()) == batches
    else:
        with pytest.raises(ValueError, match=f"{n_items} training items over {world} device.* one batch of 2"):
            dm.train_dataloader()
    dm.val_set = list(range(1))  # validation has no such minimum
    assert len(dm.val_dataloader()) == 1


def test_the_fit_loops_position():
    assert _epoch_to_run(None) == 0 and _batches_done_in_epoch(None) == 0
    assert _epoch_to_run(fake_trainer(started=3, processed=2)) == 2
    assert _batches_done_in_epoch(fake_trainer(started=3, processed=2, batches=7)) == 7  # inside epoch 2
    assert _batches_done_in_epoch(fake_trainer(started=3, processed=3, batches=7)) == 0  # between epochs
    assert _batches_done_in_epoch(fake_trainer(started=2, processed=3, batches=7)) == 0


def test_epoch_sampler_yields_python_ints():
    sampler = EpochSampler(list(range(4)), num_replicas=1, rank=0, shuffle=False)
    assert list(sampler) == [(0, 0), (0, 1), (0, 2), (0, 3)]
    assert all(type(i) is int for _, i in sampler)


def test_resumable_loader_without_a_distributed_sampler():
    loader = ResumableLoader(list(range(4)), batch_size=2)
    assert loader.state_dict() == {"num_replicas": 1}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loader.load_state_dict({})  # an old checkpoint: nothing to compare
        loader.load_state_dict({"num_replicas": 1})
    warned = "on 1 device\\(s\\) a run checkpointed on 4: the rest of the epoch is split differently"
    with pytest.warns(UserWarning, match=warned):
        loader.load_state_dict({"num_replicas": 4})


# ------------------------------------------------------------------------------------------------ seeding
class RandomItems:
    def __len__(self) -> int:
        return 9

    def __getitem__(self, i: int) -> tuple[int, list[float]]:
        return i, torch.rand(3).tolist()


def test_seeded_items_draw_under_the_seed_of_seed_epoch_and_item():
    items = SeededItems(RandomItems(), seed=11)
    assert len(items) == 9
    torch.manual_seed(123)
    before = torch.get_rng_state()
    index, drawn = items[(2, 7)]
    assert torch.equal(torch.get_rng_state(), before)  # the caller's generator is untouched
    expected = torch.rand(3, generator=torch.Generator().manual_seed(derive_seed(11, "augment", 2, 7))).tolist()
    assert index == 7 and drawn == expected
    assert items[5] == items[(0, 5)] and items[5][0] == 5  # a plain index is epoch 0
    assert items[(1, 5)] != items[(0, 5)]


# ------------------------------------------------------------------------------------------------ checks
def test_per_device_batch_by_hand():
    assert per_device_batch(24, fake_trainer(world=2, accumulate=3)) == 4
    assert type(per_device_batch(24, fake_trainer(world=2, accumulate=3))) is int  # a batch size
    assert per_device_batch(1, None) == 1
    with pytest.raises(ValueError, match="0 is not divisible by 1 device\\(s\\) x 1 gradient .* multiple of 1"):
        per_device_batch(0, None)
    with pytest.raises(ValueError, match="26 is not divisible by 2 device\\(s\\) x 3 gradient .* multiple of 6"):
        per_device_batch(26, fake_trainer(world=2, accumulate=3))


@pytest.mark.parametrize(
    ("size", "augment", "interpolation", "antialias", "ok"),
    [
        (64, "resize", None, None, True),
        (64, "resize", "bilinear", False, True),
        (32, "resize", None, None, False),
        (64, "random_resized_crop", None, None, False),
        (64, "resize", "bicubic", None, False),
        (64, "resize", None, True, False),
    ],
)
def test_a_square_store_only_for_its_own_resize(size, augment, interpolation, antialias, ok):
    store = SimpleNamespace(square=64, path="store.zarr")
    if ok:
        check_square_store(store, size, augment, interpolation, antialias)
    else:
        with pytest.raises(ValueError, match=f"store.zarr: .* 64 x 64 .* input_size {size}, augment '{augment}'"):
            check_square_store(store, size, augment, interpolation, antialias)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_val_fraction_must_be_in_0_1(bad):
    with pytest.raises(ValueError, match=f"val_fraction must be in \\[0, 1\\), got {bad}"):
        module(val_fraction=bad)
    module(val_fraction=0.0)
    module(val_fraction=0.99)


def test_arguments_are_checked_and_kept():
    with pytest.raises(ValueError, match="normalize must be 'dataset' or 'imagenet', got 'unit'"):
        module(normalize="unit")
    with pytest.raises(ValueError, match="input_channels"):
        module(input_channels="3d")
    assert module(batch_size=None).batch_size == 64  # neither batch given: 64
    assert module(batch_size=None, global_batch_size=32).batch_size is None  # set at setup
    dm = RoiDataModule(Path("c"), Path("c.zarr"), Path("m.parquet"), packed=Path("p.zarr"), num_workers=0)
    assert dm.corpus == Path("c") and dm.cache_path == Path("c.zarr") and dm.manifest_path == Path("m.parquet")
    assert dm.packed_path == "p.zarr"
    assert (dm.hparams.corpus, dm.hparams.cache, dm.hparams.manifest, dm.hparams.packed) == (
        "c",
        "c.zarr",
        "m.parquet",
        "p.zarr",
    )
    plain = module()
    assert plain.manifest_path is None and plain.packed_path is None
    assert plain.hparams.manifest is None and plain.hparams.packed is None
    assert plain.train_set is None and plain.val_set is None and plain.pixel_stats is None


def test_validation_rows_hold_out_whole_patients_by_the_shared_split():
    rows = pd.DataFrame({"path": [f"f{i}.png" for i in range(12)], "patient_key": [f"p{i % 4}" for i in range(12)]})
    assert validation_rows(rows, 0.0, 0).tolist() == [False] * 12
    for seed in range(3):
        is_val = validation_rows(rows, 0.5, seed)
        groups = [f"p{i % 4}" for i in range(12)]
        expected = assign_group_splits(groups, seed=seed, val_share=0.5, test_share=0.0) == "val"
        assert is_val.dtype == bool and is_val.tolist() == expected.tolist()
        for g in set(groups):  # whole patients
            assert len({bool(v) for v, h in zip(is_val, groups, strict=True) if h == g}) == 1
        assert is_val.sum() == 6  # 2 of 4 patients, 3 images each


def test_uint8_batches_become_unit_floats_on_the_device():
    batch = {"image": torch.tensor([[0, 51, 255]], dtype=torch.uint8), "roi": torch.ones(1)}
    out = module().on_after_batch_transfer(batch, 0)
    assert out["image"].dtype == torch.float32 and out["image"].tolist() == [pytest.approx([0.0, 0.2, 1.0])]


def test_pixel_stats_are_written_to_the_run_folder_by_rank_zero_only(tmp_path):
    stats = PixelStats(mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), source="dataset", n_images=7)
    dm = module()
    dm.pixel_stats = stats
    dm._record_pixel_stats()  # no trainer: hparams only
    assert dm.hparams["pixel_stats"] == stats.as_dict()
    dm.trainer = fake_trainer(log_dir=str(tmp_path / "other"), global_zero=False)
    dm._record_pixel_stats()
    assert not (tmp_path / "other").exists()
    dm.trainer = fake_trainer(log_dir=None)
    dm.trainer.loggers = [object()]
    dm._record_pixel_stats()  # a logger without a folder
    dm.trainer = fake_trainer(log_dir=str(tmp_path / "run" / "v0"))
    dm._record_pixel_stats()
    dm._record_pixel_stats()  # again (e.g. a second fit): the folder exists already
    assert json.loads((tmp_path / "run" / "v0" / "pixel_stats.json").read_text())["mean"] == [0.1, 0.2, 0.3]


# ------------------------------------------------------------------------------------------------ setup
@pytest.fixture(scope="module")
def roi_data(tmp_path_factory) -> tuple[Path, Path]:
    return write_roi_corpus(tmp_path_factory.mktemp("dm"), n=6)  # items 0-4 done (0 with an empty ROI), 5 pending


def test_setup_refuses_a_missing_cache_and_an_empty_selection(roi_data, tmp_path):
    corpus, cache = roi_data
    with pytest.raises(FileNotFoundError, match="no ROI cache here"):
        RoiDataModule(corpus, tmp_path / "none.zarr", num_workers=0).setup("fit")
    with pytest.raises(ValueError, match="no done items to train on"):
        RoiDataModule(corpus, cache, modalities=["MR"], num_workers=0).setup("fit")
    with pytest.raises(ValueError, match="no selected items to train on"):
        RoiDataModule(corpus, cache, modalities=["MR"], only_done=False, num_workers=0).setup("fit")


def test_setup_splits_and_records(roi_data):
    corpus, cache = roi_data
    dm = RoiDataModule(
        corpus, cache, input_size=32, global_batch_size=4, num_workers=0, val_fraction=0.4, normalize="imagenet"
    )
    dm.trainer = fake_trainer(world=2)
    dm.setup("fit")
    assert dm.batch_size == 2  # 4 over 2 devices
    counts = dm.hparams["split_counts"]
    n_train, n_val = len(dm.train_set), len(dm.val_set)
    assert n_train + n_val == 5 and n_val == 2  # each file its own patient: quantiles 0.1, 0.3 < 0.4
    assert counts["train"]["items"] == n_train and counts["val"]["items"] == n_val
    train_ids = {dm.train_set[i]["index"] for i in range(n_train)}
    assert not train_ids & {dm.val_set[i]["index"] for i in range(n_val)} and 5 not in train_ids
    assert dm.pixel_stats == PixelStats.imagenet()
    first = dm.train_set
    dm.setup("fit")  # a second call keeps the first split
    assert dm.train_set is first
    # the whole corpus without validation, pending item included (empty ROI)
    every = RoiDataModule(corpus, cache, input_size=32, num_workers=0, only_done=False, normalize="imagenet")
    every.setup("fit")
    assert every.val_set is None and len(every.train_set) == 6
    assert np.array_equal(sorted(every.train_set[i]["index"] for i in range(6)), range(6))


# ------------------------------------------------------------------------------------- what setup wires
def spy_dataset_stats(monkeypatch) -> list[tuple[tuple, dict]]:
    """Record the arguments setup hands to the dataset statistics (the real function still computes them)."""
    import pretrain.datamodule as datamodule

    calls, real = [], datamodule.dataset_stats

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(datamodule, "dataset_stats", spy)
    return calls


def test_setup_wires_the_crop_the_evaluation_resize_the_channels_and_the_statistics(roi_data, monkeypatch):
    """SparK's crop with every parameter off its default: each reaches the transform it is meant for. The
    statistics' images are resized square with the crop reference's resampling (bicubic, antialiased), since
    interpolation and antialias are left to the reference."""
    corpus, cache = roi_data
    calls = spy_dataset_stats(monkeypatch)
    dm = RoiDataModule(
        corpus,
        cache,
        input_size=32,
        batch_size=2,
        augment="random_resized_crop",
        scale=(0.4, 0.9),
        ratio=(0.8, 1.25),
        hflip=0.25,
        normalize="dataset",
        stats_images=3,
        stats_sample="first",
        num_workers=1,
        seed=7,
        val_fraction=0.4,
        input_channels="2.5d",
    )
    dm.setup("fit")
    train = dm.train_set.dataset
    crop, flip = train.transform.transforms
    assert type(crop) is v2.RandomResizedCrop and tuple(crop.size) == (32, 32)
    assert tuple(crop.scale) == (0.4, 0.9) and tuple(crop.ratio) == (0.8, 1.25)
    assert (crop.interpolation, crop.antialias) == (InterpolationMode.BICUBIC, True)  # SparK's reference
    assert flip.p == 0.25
    assert train.input_channels == "2.5d" and dm.val_set.dataset.input_channels == "2.5d"
    assert not train.integer_images and not dm.val_set.dataset.integer_images  # no square store
    resize, centre = dm.val_set.dataset.transform.transforms  # shorter side to 32, then the centre
    assert type(resize) is v2.Resize and list(resize.size) == [32] and type(centre) is v2.CenterCrop
    assert (resize.interpolation, resize.antialias) == (InterpolationMode.BICUBIC, True)
    # the statistics: once, over the training items resized square, with the run's count, sample and seed
    ((args, kwargs),) = calls
    resized, n_images = args
    assert n_images == 3 and kwargs == {"num_workers": 1, "sample": "first", "seed": 7}
    assert list(resized.indices) == list(dm.train_set.indices)
    square = resized.dataset.transform
    assert type(square) is v2.Resize and list(square.size) == [32, 32]
    assert (square.interpolation, square.antialias) == (InterpolationMode.BICUBIC, True)
    assert dm.pixel_stats != PixelStats.imagenet() and dm.hparams["pixel_stats"] == dm.pixel_stats.as_dict()


def test_setup_passes_an_explicit_resampling_to_every_transform(roi_data, monkeypatch):
    """bilinear without antialiasing asked for with the crop (whose reference is bicubic with it): the training
    crop, the evaluation resize and the statistics' resize all take it."""
    corpus, cache = roi_data
    calls = spy_dataset_stats(monkeypatch)
    kw = dict(input_size=32, batch_size=2, num_workers=0, val_fraction=0.4, interpolation="bilinear", antialias=False)
    dm = RoiDataModule(corpus, cache, augment="random_resized_crop", **kw)
    dm.setup("fit")
    crop = dm.train_set.dataset.transform.transforms[0]
    resize = dm.val_set.dataset.transform.transforms[0]
    square = calls[0][0][0].dataset.transform
    for transform in (crop, resize, square):
        assert (transform.interpolation, transform.antialias) == (InterpolationMode.BILINEAR, False)
    assert dm.train_set.dataset.input_channels == "2d"  # the default
    # "resize" (the MWM fork): a plain resize for training, evaluation and statistics
    fork = RoiDataModule(corpus, cache, augment="resize", **kw)
    fork.setup("fit")
    assert type(fork.train_set.dataset.transform.transforms[0]) is v2.Resize
    assert type(fork.val_set.dataset.transform) is v2.Resize and list(fork.val_set.dataset.transform.size) == [32, 32]


def test_a_square_uint8_store_feeds_integer_images_to_training_and_validation(roi_data, tmp_path):
    corpus, cache = roi_data
    store = tmp_path / "square.zarr"
    manifest = RoiCache.open(cache).manifest()
    pack_corpus(PackedStore.create(store, manifest, IntensityConfig(), square=32), corpus, progress=False)
    dm = RoiDataModule(corpus, cache, packed=store, input_size=32, batch_size=2, num_workers=0, val_fraction=0.4)
    dm.setup("fit")
    assert dm.train_set.dataset.integer_images and dm.val_set.dataset.integer_images
    assert dm.train_set.dataset.packed is not None and dm.hparams["pixel_stats"] == dm.pixel_stats.as_dict()


def test_setup_says_what_it_split_and_what_it_refuses(roi_data, caplog):
    corpus, cache = roi_data
    kw = dict(input_size=32, batch_size=2, num_workers=0, normalize="imagenet")
    with pytest.raises(
        ValueError,
        match=r"^\S*roi_cache\.zarr: no done items to train on \(localize the corpus first, or set "
        r"data\.only_done false to train on every item with an empty ROI\)$",
    ):
        RoiDataModule(corpus, cache, modalities=["MR"], **kw).setup("fit")
    # 5 done items, each its own patient: rank quantiles 0.1 ... 0.9 are all below 0.95
    with pytest.raises(ValueError, match=r"^\S*roi_cache\.zarr: val_fraction 0\.95 leaves no training item out of 5$"):
        RoiDataModule(corpus, cache, val_fraction=0.95, **kw).setup("fit")
    # ... and none is below 0.05: asked for validation, none drawn, said so
    with pytest.warns(UserWarning, match=r"^val_fraction 0\.05 selects none of 5 items' patients: no validation$"):
        RoiDataModule(corpus, cache, val_fraction=0.05, **kw).setup("fit")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no validation asked for, or some drawn: no warning
        RoiDataModule(corpus, cache, val_fraction=0.0, **kw).setup("fit")
        caplog.clear()
        with caplog.at_level(logging.INFO):
            RoiDataModule(corpus, cache, val_fraction=0.4, **kw).setup("fit")
    said = [r.getMessage() for r in caplog.records if "pretraining splits" in r.getMessage()]
    assert said == [
        "pretraining splits (patients / items): "
        "{'train': {'patients': 3, 'items': 3}, 'val': {'patients': 2, 'items': 2}}"
    ]
