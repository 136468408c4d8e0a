"""Square packed stores (`data pack --square N`): images stored at the pretraining input size, resized as pretraining's
`augment: resize` resizes them, so that the loader skips that resize and yields the raw path's batches (exact ROIs,
images within the quantisation); runs that would use them otherwise are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from torchvision import tv_tensors
from torchvision.transforms import v2

from data.dataset import RoiDataset, nearest_sources, unit_float
from data.intensity import IntensityConfig
from data.manifest import scan_corpus
from data.pack_cli import main as pack_main
from data.packed_store import PackedStore, pack_image, packed_provenance
from data.packing import pack_corpus
from data.provenance import ProvenanceMismatch
from data.roi_cache import RoiCache
from finetune.classify import ClassificationData
from finetune.segment import SegmentationData
from pretrain.datamodule import RoiDataModule
from pretrain.transforms import resampling
from tests.packed_fixtures import write_mixed_corpus

SIDE = 32
QUANTUM = 0.5 / 255 + 1e-6  # uint8 rounding, kept through the flip (the resize happened before it)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The mixed corpus (non-square sizes from 30 x 20 RGB to 100 x 70), a cache of one rectangle per item, and
    stores packed square at SIDE and with the default max_side."""
    root = tmp_path_factory.mktemp("square")
    corpus = write_mixed_corpus(root / "corpus")
    manifest, _ = scan_corpus(corpus, workers=1, progress=False)
    cache = RoiCache.create(root / "c.zarr", manifest, {"intensity": {}}, mask_size=32)
    rng = np.random.default_rng(0)
    masks = []
    for h, w in zip(manifest.height, manifest.width, strict=True):
        mask = np.zeros((h, w), np.uint8)
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        mask[y : y + h // 3 + 1, x : x + w // 3 + 1] = 1
        masks.append(mask)
    cache.write(range(len(manifest)), masks, masks, [np.zeros((0, 4))] * len(masks), [1.0] * len(masks))
    for name, size in (("square", {"square": SIDE}), ("plain", {})):
        pack_corpus(
            PackedStore.create(root / f"{name}.zarr", manifest, IntensityConfig(), **size), corpus, progress=False
        )
    return corpus, root / "c.zarr", root / "square.zarr", root / "plain.zarr"


def test_square_resize_is_bilinear_without_antialiasing_by_hand():
    # 8 x 4 -> 2 x 2, half-pixel centres: output row i samples source row 4i + 1.5 (the mean of rows 4i+1, 4i+2),
    # column j samples 2j + 0.5 (the mean of columns 2j, 2j+1). Antialiasing would weigh in rows 4i and 4i+3, and
    # area resampling (cv2 INTER_AREA, the max_side rule) would average all four rows.
    image = np.arange(32, dtype=np.float32).reshape(8, 4) / 31
    expect = np.array([[image[r : r + 2, c : c + 2].mean() for c in (0, 2)] for r in (1, 5)])
    got = pack_image(image, None, "uint16", square=2) / 65535
    assert got.shape == (2, 2) and np.abs(got - expect).max() <= 0.5 / 65535 + 1e-7
    rgb = pack_image(np.stack([image, 1 - image, image], -1), None, "uint8", square=2)
    assert rgb.shape == (2, 2, 3) and np.abs(rgb[..., 1] / 255 - (1 - expect)).max() <= QUANTUM


def test_the_store_packs_with_pretrainings_resize_reference():
    assert resampling("resize", None, None) == ("bilinear", False)  # what `square_resize` hard-codes


def test_square_batches_equal_the_raw_batches(data):
    corpus, cache, square, _ = data
    store = PackedStore.open(square)
    assert store.chunk_side == SIDE and (store.stored_sizes() == SIDE).all()
    kw = dict(input_size=SIDE, batch_size=4, num_workers=0, normalize="dataset", hflip=0.5, roi_shape="rect")
    raw, packed = RoiDataModule(corpus, cache, **kw), RoiDataModule(corpus, cache, packed=square, **kw)
    raw.setup("fit")
    packed.setup("fit")
    stats_raw, stats_packed = raw.pixel_stats.as_dict(), packed.pixel_stats.as_dict()
    assert np.allclose(stats_raw["mean"], stats_packed["mean"], atol=QUANTUM)
    batches = 0
    for a, b in zip(raw.train_dataloader(), packed.train_dataloader(), strict=True):
        assert b["image"].dtype == torch.uint8  # a square uint8 store's images cross to the device as stored
        b = packed.on_after_batch_transfer(b, 0)
        assert a["item_id"] == b["item_id"] and b["image"].shape == (4, 3, SIDE, SIDE)
        assert torch.equal(a["roi"], b["roi"]) and a["roi"].sum() > 0
        assert (a["image"] - b["image"]).abs().max() <= QUANTUM
        batches += 1
    assert batches == len(raw.train_set) // 4 >= 4


def test_integer_batches_become_exactly_the_float_batches(data):
    """uint8 through the loader, stored value / 255 on the device: the very floats the dataset's own conversion
    gives (flipping commutes with a per-pixel division)."""
    corpus, cache, square, _ = data
    kw = dict(input_size=SIDE, batch_size=4, num_workers=0, normalize="imagenet", hflip=0.5)
    module = RoiDataModule(corpus, cache, packed=square, **kw)
    module.setup("fit")
    items = module.train_set.dataset
    assert items.integer_images
    as_float = RoiDataset(corpus, cache=cache, packed=square)  # no transform: the stored image, as float
    checked = 0
    for batch in module.train_dataloader():
        batch = module.on_after_batch_transfer(batch, 0)
        assert batch["image"].dtype == torch.float32
        for image, index in zip(batch["image"], batch["index"].tolist(), strict=True):
            expect = as_float[as_float.indices.tolist().index(index)]["image"]
            assert torch.equal(image, expect) or torch.equal(image, expect.flip(-1))
            checked += 1
    assert checked >= 16
    assert torch.equal(
        unit_float(torch.tensor([0, 1, 128, 255], dtype=torch.uint8)), torch.tensor([0, 1, 128, 255]) / 255
    )
    with pytest.raises(ValueError, match="uint8"):
        RoiDataset(corpus, cache=cache, integer_images=True)


def test_square_rois_are_drawn_at_the_native_size_then_resized_as_torchvision_does(data):
    corpus, cache, square, _ = data
    dataset = RoiDataModule(corpus, cache, packed=square, input_size=SIDE, num_workers=0, normalize="imagenet")
    dataset.setup("fit")
    items = dataset.train_set.dataset
    items.transform = None  # the raw reads: image and ROI at SIDE, the ROI from the manifest's size
    rois = RoiCache.open(cache)
    resize = v2.Resize((SIDE, SIDE))  # masks: nearest, whatever the image interpolation
    for i in range(len(items)):
        item, index = items[i], int(items.indices[i])
        native = tv_tensors.Mask(torch.from_numpy(rois.read_mask(index, None, "rect"))[None])
        assert item["image"].shape[-2:] == (SIDE, SIDE) and native.shape[-2:] != (SIDE, SIDE)
        assert torch.equal(item["roi"], resize(native))


def test_nearest_sources_are_torchvisions_mask_resize():
    rng = np.random.default_rng(0)
    for n_in, n_out in ((512, 224), (513, 224), (1000, 224), (300, 224), (70, 32), (20, 32), (97, 64), (3000, 384)):
        mask = (rng.random((n_in, n_in + 5)) < 0.5).astype(np.uint8)
        want = v2.Resize((n_out, n_out))(tv_tensors.Mask(torch.from_numpy(mask)[None]))[0].numpy()
        got = mask[nearest_sources(n_in, n_out)[:, None], nearest_sources(n_in + 5, n_out)]
        assert np.array_equal(got, want), (n_in, n_out)


def test_pretraining_refuses_a_square_store_it_would_resize_otherwise(data):
    corpus, cache, square, _ = data
    kw = dict(batch_size=4, num_workers=0, normalize="imagenet")
    for other in (
        dict(input_size=48),
        dict(input_size=SIDE, augment="random_resized_crop"),
        dict(input_size=SIDE, antialias=True),
        dict(input_size=SIDE, interpolation="bicubic"),
    ):
        with pytest.raises(ValueError, match=rf"square\.zarr: a square packed store .* {SIDE} x {SIDE}.*--square"):
            RoiDataModule(corpus, cache, packed=square, **kw, **other).setup("fit")


def test_finetuning_refuses_a_square_store(data):
    _, _, square, plain = data
    for task in (ClassificationData, SegmentationData):
        with pytest.raises(ValueError, match=r"square\.zarr: a square packed store .*aspect.*without --square"):
            task("corpus", "labels.csv", packed=str(square))
    with pytest.raises(FileNotFoundError, match="labels.csv"):  # a max_side store passes: the labels are read next
        ClassificationData("corpus", "labels.csv", packed=str(plain))


def test_provenance_round_trip_and_old_stores(data, tmp_path):
    corpus, cache, square, plain = data
    store, manifest = PackedStore.open(square), RoiCache.open(cache).manifest()
    assert store.provenance["square"] == SIDE and store.square == SIDE and store.max_side is None
    assert PackedStore.open(plain).provenance["square"] is None and PackedStore.open(plain).max_side == 512
    assert PackedStore.open_or_create(square, manifest, IntensityConfig()).square == SIDE  # resumed as it is
    assert PackedStore.open_or_create(square, manifest, IntensityConfig(), square=SIDE).square == SIDE
    with pytest.raises(ProvenanceMismatch, match="square"):
        PackedStore.open_or_create(square, manifest, IntensityConfig(), max_side=SIDE)
    with pytest.raises(ProvenanceMismatch, match="square"):
        PackedStore.open_or_create(plain, manifest, IntensityConfig(), square=SIDE)
    with pytest.raises(ValueError, match="not both"):
        packed_provenance(IntensityConfig(), 64, "uint8", manifest, square=SIDE)
    # a store made before `square` existed: no key, opens and resumes as a max_side store
    old = PackedStore.create(tmp_path / "old.zarr", manifest, IntensityConfig(), max_side=64)
    group = zarr.open_group(old.path, mode="r+")
    provenance = dict(group.attrs["provenance"])
    del provenance["square"]
    group.attrs["provenance"] = provenance
    reopened = PackedStore.open_or_create(old.path, manifest, IntensityConfig())
    assert reopened.square is None and reopened.max_side == 64


def test_pack_cli_square(data, tmp_path, capsys):
    corpus, cache, _, _ = data
    out = tmp_path / "cli.zarr"
    args = ["--corpus", str(corpus), "--cache", str(cache), "--out", str(out), "--workers", "1", "--no-progress"]
    assert pack_main([*args, "--square", "24"]) == 0
    store = PackedStore.open(out)
    assert store.square == 24 and (store.stored_sizes() == 24).all() and store.counts()["done"] == store.n_items
    with pytest.raises(SystemExit):
        pack_main([*args, "--square", "24", "--max-side", "64"])
    assert "not allowed with argument" in capsys.readouterr().err
    assert pack_main([*args, "--max-side", "64"]) == 2 and "square" in capsys.readouterr().err
