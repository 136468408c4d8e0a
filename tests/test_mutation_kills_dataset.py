"""RoiDataset cases for `make mutate MODULE=data/dataset.py`: channel handling (grey kept or repeated, RGB to
ITU-R 601 luma), items without a cache, the manifest given as a file, and the exact refusal messages."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from data.dataset import RoiDataset, nearest_sources
from data.intensity import IntensityConfig
from data.manifest import scan_corpus
from data.packed_store import PackedStore
from data.roi_cache import RoiCache

H, W = 20, 28


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two grey PNGs and one RGB PNG (20 x 28), a cache of the three items (all done)."""
    tmp = tmp_path_factory.mktemp("dataset_kills")
    folder = tmp / "corpus" / "xray"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(2):
        cv2.imwrite(str(folder / f"grey_{k}.png"), rng.integers(0, 256, (H, W), dtype=np.uint8))
    cv2.imwrite(str(folder / "rgb.png"), rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    manifest, _ = scan_corpus(tmp / "corpus", progress=False)
    cache = RoiCache.create(tmp / "c.zarr", manifest, {"test": "dataset kills"}, mask_size=32)
    rois = [np.eye(H, W, dtype=np.uint8)] * 3
    cache.write(range(3), rois, rois, [np.zeros((0, 4))] * 3, [1.0] * 3)
    return tmp / "corpus", manifest, tmp / "c.zarr", tmp


def row(manifest, name: str) -> int:
    return int(np.flatnonzero(manifest["path"].str.endswith(name))[0])


def test_grey_stays_one_channel_or_is_repeated_and_rgb_becomes_luma(corpus):
    root, manifest, cache_path, _ = corpus
    grey, rgb = row(manifest, "grey_1.png"), row(manifest, "rgb.png")
    one = RoiDataset(root, cache=cache_path, channels=1)
    three = RoiDataset(root, cache=cache_path, channels=3)
    assert one[grey]["image"].shape == (1, H, W) and three[grey]["image"].shape == (3, H, W)
    for c in range(3):
        assert torch.equal(three[grey]["image"][c], one[grey]["image"][0])
    colour = three[rgb]["image"]
    assert colour.shape == (3, H, W) and not torch.equal(colour[0], colour[1])
    luma = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    assert one[rgb]["image"].shape == (1, H, W)
    torch.testing.assert_close(one[rgb]["image"][0], luma, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"^cannot turn a 3-channel image into 2 channels$"):
        RoiDataset(root, cache=cache_path, channels=2)[rgb]


def test_items_without_a_cache_have_an_empty_roi_of_the_images_size(corpus, tmp_path):
    root, manifest, _, _ = corpus
    manifest.to_parquet(tmp_path / "m.parquet")
    dataset = RoiDataset(root, manifest=str(tmp_path / "m.parquet"))
    assert len(dataset) == 3 and dataset.cache is None
    item = dataset[2]
    assert item["roi"].shape == (1, H, W) and item["roi"].dtype == torch.uint8 and item["roi"].sum() == 0
    assert isinstance(item["index"], int) and item["index"] == 2 and item["item_id"] == manifest.item_id[2]
    assert item["image"].dtype == torch.float32 and 0 <= item["image"].min() and item["image"].max() <= 1


def test_refusals_say_what_is_wrong(corpus):
    root, manifest, cache_path, _ = corpus
    with pytest.raises(ValueError, match=r"^roi_shape must be one of \('sam', 'rect'\), got 'box'$"):
        RoiDataset(root, cache=cache_path, roi_shape="box")
    with pytest.raises(ValueError, match=r"^RoiDataset needs a manifest, a cache or a packed store$"):
        RoiDataset(root)
    with pytest.raises(ValueError, match=r"^integer_images needs a packed store of uint8 images and channels 3"):
        RoiDataset(root, cache=cache_path, integer_images=True)
    with pytest.raises(ValueError) as error:
        RoiDataset(root, manifest=manifest.iloc[:2], cache=cache_path)
    assert str(error.value) == f"{cache_path}: cache has 3 items, the manifest 2"
    with pytest.raises(ValueError) as error:
        RoiDataset(root, manifest=manifest.iloc[[0, 2, 1]], cache=cache_path)
    assert str(error.value) == (
        f"{cache_path}: the manifest's items differ from the cache's (different corpus or scan?)"
    )


@pytest.mark.parametrize(("in_size", "out_size"), [(2, 50), (2, 58), (20, 224), (28, 224), (300, 224), (7, 100)])
def test_nearest_sources_are_the_pixels_torchs_nearest_resize_reads(in_size, out_size):
    """The reference is torch's own nearest resize of the index ramp 0..in-1. At 2 -> 50 (and 2 -> 58) the float32
    product i * (2 / 50) at i = 25 rounds to 1.0 where float64 gives 0.99999...: torch reads pixel 1 there."""
    ramp = torch.arange(in_size, dtype=torch.float32).view(1, 1, 1, in_size)
    read = F.interpolate(ramp, size=(1, out_size), mode="nearest")[0, 0, 0].long().numpy()
    assert np.array_equal(nearest_sources(in_size, out_size), read)


def test_a_packed_store_is_refused_with_its_path_and_reason(corpus, tmp_path):
    """Other items, other intensity rules, or selected items still pending: each refusal names the store."""
    root, manifest, cache_path, _ = corpus
    other = PackedStore.create(tmp_path / "other.zarr", manifest.iloc[:2], IntensityConfig())
    with pytest.raises(ValueError) as error:
        RoiDataset(root, cache=cache_path, packed=other)
    assert str(error.value) == (
        f"{other.path}: packed from other items than this manifest's (different corpus or scan?)"
    )
    store = PackedStore.create(tmp_path / "p.zarr", manifest, IntensityConfig())
    store.write([0, 2], [np.full((H, W), 0.5, dtype=np.float32)] * 2)  # item 1 still pending
    with pytest.raises(ValueError) as error:
        RoiDataset(root, cache=cache_path, packed=store)
    assert str(error.value) == (
        f"{store.path}: 1 selected items are not packed yet; finish it with `python -m data pack`"
    )
    with pytest.raises(ValueError, match=rf"^{re.escape(str(store.path))}: the packed images were normalised"):
        RoiDataset(root, cache=cache_path, packed=store, intensity=IntensityConfig(percentiles=(1.0, 99.0)))


def test_a_downscaled_packed_store_gets_the_roi_drawn_at_the_stored_size(corpus, tmp_path):
    """A store of images at most 14 px a side holds 10 x 14 images of the 20 x 28 files: the ROI is drawn at
    10 x 14 too (not at the manifest's native size, which only a square store's ROI uses)."""
    root, manifest, cache_path, _ = corpus
    store = PackedStore.create(tmp_path / "small.zarr", manifest, IntensityConfig(), max_side=14)
    store.write([0, 1, 2], [np.full((H, W), 0.5, dtype=np.float32)] * 3)
    item = RoiDataset(root, cache=cache_path, packed=store)[1]
    assert item["image"].shape == (3, 10, 14) and item["roi"].shape == (1, 10, 14)
    expected = RoiCache.open(cache_path).read_mask(1, (10, 14), "sam")
    assert np.array_equal(item["roi"][0].numpy(), expected) and expected.sum() > 0


def test_grey_images_are_repeated_to_any_channel_count(corpus):
    root, manifest, cache_path, _ = corpus
    grey = row(manifest, "grey_0.png")
    one = RoiDataset(root, cache=cache_path, channels=1)[grey]["image"]
    two = RoiDataset(root, cache=cache_path, channels=2)[grey]["image"]
    assert two.shape == (2, H, W) and torch.equal(two[0], one[0]) and torch.equal(two[1], one[0])


def test_files_are_read_with_the_manifests_modality_and_the_given_intensity_rules(corpus):
    """grey_0.png (under xray/, so XR by its path) is listed as MR, and the rules stretch MR min-max: the image is
    then (v - min) / (max - min) of the file's values exactly (XR's default 0.5-99.5 percentiles would differ)."""
    root, manifest, cache_path, _ = corpus
    grey = row(manifest, "grey_0.png")
    as_mr = manifest.copy()
    as_mr.loc[grey, "modality"] = "MR"
    rules = IntensityConfig(per_modality={"MR": {"percentiles": (0.0, 100.0)}})
    image = RoiDataset(root, manifest=as_mr, cache=cache_path, intensity=rules, channels=1)[grey]["image"][0]
    v = cv2.imread(str(root / manifest.path[grey]), cv2.IMREAD_UNCHANGED).astype(np.float64)
    expected = torch.from_numpy((v - v.min()) / (v.max() - v.min())).float()
    torch.testing.assert_close(image, expected, atol=1e-6, rtol=0)


def test_integer_images_need_a_uint8_store_and_three_channels(corpus, tmp_path):
    root, manifest, cache_path, _ = corpus
    uint8 = PackedStore.create(tmp_path / "u8.zarr", manifest, IntensityConfig())
    wide = PackedStore.create(tmp_path / "u16.zarr", manifest, IntensityConfig(), dtype="uint16")
    for store, wide_or_grey in ((uint8, {"channels": 1}), (wide, {"channels": 3})):
        with pytest.raises(ValueError, match=r"^integer_images needs a packed store of uint8 images and channels 3"):
            RoiDataset(root, cache=cache_path, packed=store, integer_images=True, **wide_or_grey)


def test_the_datasets_manifest_is_the_given_one_renumbered(corpus):
    """Rows keep their columns (no old index added as a column) and are numbered 0..n-1: item i is row i."""
    root, manifest, _, _ = corpus
    given = manifest.set_axis([10, 11, 12])
    dataset = RoiDataset(root, manifest=given)
    pd.testing.assert_frame_equal(dataset.manifest, manifest.reset_index(drop=True))
    assert dataset[1]["index"] == 1 and dataset[1]["item_id"] == manifest.item_id[1]
