"""The datasets and data modules read from a packed store what they read from the files; intensity rules follow the
cache, the store and the export, with a warning on override and a refusal of a store of other rules."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from data.dataset import RoiDataset
from data.intensity import IntensityConfig
from data.intensity_follow import IntensityMismatch, IntensityOverride
from data.manifest import scan_corpus
from data.packed_store import PackedStore
from data.packing import pack_corpus
from data.roi_cache import RoiCache
from data.sample import write_sample_corpus
from finetune.classify import ClassificationData
from finetune.segment import SegmentationData
from pretrain.datamodule import RoiDataModule
from pretrain.transforms import train_transform

LUNG = IntensityConfig(ct_window="lung")
QUANTUM = 0.5 / 255 + 1e-6  # uint8 rounding, kept through bilinear resizing and flips


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Sample corpus (DICOM CT, NIfTI MR, PNG X-ray), a cache recording the lung window, a store packed with it."""
    root = tmp_path_factory.mktemp("packed_data")
    corpus = root / "corpus"
    write_sample_corpus(corpus, n=4, seed=0, size=64)
    manifest, _ = scan_corpus(corpus, workers=1, progress=False)
    cache = RoiCache.create(root / "c.zarr", manifest, {"intensity": {"ct_window": "lung"}}, mask_size=32)
    rng = np.random.default_rng(0)
    masks = []
    for h, w in zip(manifest.height, manifest.width, strict=True):
        mask = np.zeros((h, w), np.uint8)
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        mask[y : y + h // 3, x : x + w // 4] = 1
        masks.append(mask)
    cache.write(range(len(manifest)), masks, masks, [np.zeros((0, 4))] * len(masks), [1.0] * len(masks))
    store = PackedStore.create(root / "p.zarr", manifest, LUNG, shard_items=8)
    pack_corpus(store, corpus, progress=False)
    return corpus, root / "c.zarr", root / "p.zarr"


def test_roi_dataset_reads_from_the_store_what_it_reads_from_the_files(data):
    corpus, cache, store = data
    transform = train_transform(48)
    raw = RoiDataset(corpus, cache=cache, transform=transform, intensity=LUNG, roi_shape="rect")
    packed = RoiDataset(corpus, cache=cache, transform=transform, intensity=LUNG, roi_shape="rect", packed=store)
    assert len(raw) == len(packed) == 12 and packed.packed.chunk_side == 64  # chunks as large as the images
    flips = 0
    for i in range(len(raw)):
        torch.manual_seed(i)
        a = raw[i]
        torch.manual_seed(i)
        b = packed[i]
        assert a["item_id"] == b["item_id"] and a["index"] == b["index"]
        assert b["image"].shape == (3, 48, 48) and torch.equal(b["image"][0], b["image"][2])
        assert (a["image"] - b["image"]).abs().max() <= QUANTUM
        assert torch.equal(a["roi"], b["roi"]) and a["roi"].sum() > 0
        flips += int(not torch.equal(a["roi"], raw[i]["roi"]))  # another draw: the seeded flip did matter
    assert flips > 0


def test_pretraining_follows_the_cache_intensity_and_reads_the_store(data):
    corpus, cache, store = data
    kw = dict(input_size=32, batch_size=4, num_workers=0, normalize="imagenet", hflip=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", IntensityOverride)
        from_files, from_store = RoiDataModule(corpus, cache, **kw), RoiDataModule(corpus, cache, packed=store, **kw)
        from_files.setup("fit")
        from_store.setup("fit")
    assert from_files.hparams["intensity_used"] == LUNG.to_dict() == from_store.hparams["intensity_used"]
    assert from_store.train_set.dataset.packed is not None and from_files.train_set.dataset.packed is None
    a, b = next(iter(from_files.train_dataloader())), next(iter(from_store.train_dataloader()))
    assert a["item_id"] == b["item_id"] and torch.equal(a["roi"], b["roi"])
    assert (a["image"] - b["image"]).abs().max() <= QUANTUM


def test_an_override_is_warned_and_a_store_of_other_rules_refused(data):
    corpus, cache, store = data
    kw = dict(input_size=32, batch_size=4, num_workers=0, normalize="imagenet", intensity={"ct_window": "bone"})
    dm = RoiDataModule(corpus, cache, **kw)
    with pytest.warns(IntensityOverride, match=r'ROI cache .*c\.zarr.*ct_window: "bone" vs "lung"'):
        dm.setup("fit")
    assert dm.hparams["intensity_used"]["ct_window"] == [400.0, 1800.0]  # the run's own rules are used
    with pytest.warns(IntensityOverride), pytest.raises(IntensityMismatch, match=r'p\.zarr.*"bone" vs \[-600.0'):
        RoiDataModule(corpus, cache, packed=store, **kw).setup("fit")


def test_finetuning_reads_the_store_and_follows_its_rules(data):
    corpus, _, store = data
    kw = dict(image_size=32, augment=False)
    raw = ClassificationData(str(corpus), "labels.csv", intensity={"ct_window": "lung"}, **kw)
    packed = ClassificationData(str(corpus), "labels.csv", packed=str(store), **kw)
    assert packed.intensity.differences(LUNG) == []
    a, b = raw.split_dataset("train"), packed.split_dataset("train")
    for i in range(len(a)):
        (x, y), (u, v) = a[i], b[i]
        assert y == v and (x - u).abs().max() <= QUANTUM / 0.224  # after timm's mean / std (smallest std 0.224)
    raw_seg = SegmentationData(str(corpus), "labels.csv", intensity={"ct_window": "lung"}, **kw).split_dataset("val")
    packed_seg = SegmentationData(str(corpus), "labels.csv", packed=str(store), **kw).split_dataset("val")
    for (x, m), (u, n) in zip(raw_seg, packed_seg, strict=True):  # read at the file's own size, where the mask lies
        assert torch.equal(m, n) and (x - u).abs().max() <= QUANTUM / 0.224
    with pytest.raises(IntensityMismatch, match="ct_window"):
        ClassificationData(str(corpus), "labels.csv", packed=str(store), intensity={"ct_window": "bone"}, **kw)


def test_finetuning_follows_the_exported_backbones_pretraining_rules(data, tmp_path):
    corpus, _, _ = data
    backbone = tmp_path / "backbone.pt"
    backbone.write_bytes(b"")  # only the sidecar is read here
    sidecar = {"backbone": "resnet18", "intensity": {"ct_window": [-600.0, 1500.0], "percentiles": [1.0, 99.0]}}
    (tmp_path / "backbone.pt.json").write_text(json.dumps(sidecar))
    kw = dict(image_size=32, augment=False)
    followed = ClassificationData(str(corpus), "labels.csv", init=str(backbone), **kw)
    assert followed.intensity.differences(IntensityConfig(ct_window="lung", percentiles=(1, 99))) == []
    with pytest.warns(IntensityOverride, match=r"export record of .*backbone\.pt.*percentiles"):
        ClassificationData(str(corpus), "labels.csv", init=str(backbone), intensity={"ct_window": "lung"}, **kw)
    assert ClassificationData(str(corpus), "labels.csv", init="scratch", **kw).intensity == IntensityConfig()


def test_the_export_records_the_rules_pretraining_used(tmp_path):
    from pretrain.export import export_backbone, read_sidecar
    from pretrain.spark import SparkMIM

    state = {f"model.{k}": v for k, v in SparkMIM("resnet18", input_size=64, decoder_width=32).state_dict().items()}
    used = IntensityConfig(ct_window="lung").to_dict()
    checkpoint = {
        "state_dict": state,
        "hyper_parameters": {"backbone": "resnet18"},
        "datamodule_hyper_parameters": {"intensity": None, "intensity_used": used},
    }
    torch.save(checkpoint, tmp_path / "last.ckpt")
    export_backbone(tmp_path / "last.ckpt", tmp_path / "backbone.pt")
    assert read_sidecar(tmp_path / "backbone.pt")["intensity"] == used


def test_a_cache_without_intensity_rules_takes_the_stores(data, tmp_path):
    """A cache of imported masks records no intensity rules: pretraining takes the packed store's (the lung window
    here), silently; the default rules would differ from the store's and be refused."""
    corpus, cache, store = data
    manifest, _ = scan_corpus(corpus, workers=1, progress=False)
    bare = RoiCache.create(tmp_path / "imported.zarr", manifest, {}, mask_size=32)
    masks = [np.ones((h, w), np.uint8) for h, w in zip(manifest.height, manifest.width, strict=True)]
    bare.write(range(len(manifest)), masks, masks, [np.zeros((0, 4))] * len(masks), [1.0] * len(masks))
    kw = dict(input_size=32, batch_size=4, num_workers=0, normalize="imagenet", hflip=0.0)
    dm = RoiDataModule(corpus, tmp_path / "imported.zarr", packed=store, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error", IntensityOverride)
        dm.setup("fit")
    assert LUNG.differences(IntensityConfig()) != []  # the store's rules are not the defaults
    assert dm.hparams["intensity_used"] == LUNG.to_dict()
