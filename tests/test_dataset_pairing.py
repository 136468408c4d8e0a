"""Each image travels with its OWN ROI through the dataset's filtering and index maps (issue 30, weak spot a).

Every item's image carries one bright band at a place of its own, and the cache holds exactly that band as the
item's ROI, so a ROI read for any other item overlaps the image's band nowhere. Items are filtered out of the middle
of the cache (one failed, one pending, a modality, an item the packed store failed), the images are not square
(36 x 52), and the pairing is checked item by item through RoiDataset (files and packed store, both ROI shapes) and
through RoiDataModule's train/validation subsets.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from data.dataset import RoiDataset
from data.intensity import IntensityConfig
from data.manifest import scan_corpus
from data.packed_store import PackedStore
from data.packing import pack_corpus
from data.roi_cache import RoiCache
from pretrain.datamodule import RoiDataModule

H, W = 36, 52  # not square: a swapped (h, w) changes every shape
N = 7
FAILED_ROW, PENDING_ROW = 2, 4  # filtered out of the middle of the cache


def band(k: int, h: int = H, w: int = W) -> np.ndarray:
    """Item k's bright band, 0/1 (h, w): columns 6k+2..6k+5, rows 3+k..22+k; disjoint from every other item's."""
    m = np.zeros((h, w), np.uint8)
    m[3 + k : 23 + k, 6 * k + 2 : 6 * k + 6] = 1
    return m


def file_number(path: str) -> int:
    return int(path.rsplit("_", 1)[1].split(".")[0])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """7 PNGs (4 XR, 3 MR), item k bright on band(k) only; cache rows done except FAILED_ROW and PENDING_ROW."""
    tmp = tmp_path_factory.mktemp("pairing")
    for k in range(N):
        folder = tmp / "corpus" / ("mr" if k % 2 else "xray")
        folder.mkdir(parents=True, exist_ok=True)
        img = band(k) * np.uint8(200 + k)
        img[H - 1, W - 1] = 1  # some dynamic range on the dark side
        cv2.imwrite(str(folder / f"img_{k}.png"), img)
    manifest, _ = scan_corpus(tmp / "corpus", progress=False)
    assert len(manifest) == N and set(manifest["modality"]) == {"XR", "MR"}
    assert (manifest[["height", "width"]].to_numpy() == (H, W)).all()
    numbers = [file_number(p) for p in manifest["path"]]
    cache = RoiCache.create(tmp / "c.zarr", manifest, {"test": "pairing"}, mask_size=64)
    done = [r for r in range(N) if r not in (FAILED_ROW, PENDING_ROW)]
    rois = [band(numbers[r]) for r in done]
    cache.write(done, rois, [m.astype(np.float32) for m in rois], [np.zeros((0, 4))] * len(done), [1.0] * len(done))
    cache.write_failed([FAILED_ROW], ["planted failure"])
    return tmp / "corpus", manifest, tmp / "c.zarr", numbers, tmp


def overlap(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return float((a & b).sum() / max((a | b).sum(), 1))


def assert_own_roi(item: dict, manifest, numbers: list[int], exact: bool) -> None:
    """The item's ROI is its own image's band (and its id its manifest row's), not any other item's."""
    index = item["index"]
    assert item["item_id"] == manifest.item_id[index]
    image, roi = item["image"], item["roi"][0]
    assert image.shape[-2:] == roi.shape
    bright = (image[0] > 0.5).numpy()
    assert overlap(bright, band(numbers[index], *roi.shape)) > 0.7  # the image is the row's file
    if exact:
        assert np.array_equal(roi.numpy(), bright.astype(np.uint8))
    assert overlap(roi, bright) > 0.7
    others = [k for k in range(N) if k != numbers[index]]
    assert all(overlap(roi, band(k, *roi.shape)) == 0 for k in others)


@pytest.mark.parametrize("roi_shape", ["rect", "sam"])
def test_done_items_filtered_from_the_middle_keep_their_own_roi(corpus, roi_shape):
    root, manifest, cache_path, numbers, _ = corpus
    dataset = RoiDataset(root, cache=cache_path, roi_shape=roi_shape)
    assert dataset.indices.tolist() == [0, 1, 3, 5, 6]
    assert [dataset[i]["index"] for i in range(len(dataset))] == [0, 1, 3, 5, 6]
    for i in range(len(dataset)):
        item = dataset[i]
        assert item["image"].shape == (3, H, W) and item["roi"].shape == (1, H, W)
        assert_own_roi(item, manifest, numbers, exact=roi_shape == "rect")


def test_a_modality_filter_keeps_each_items_own_roi(corpus):
    root, manifest, cache_path, numbers, _ = corpus
    dataset = RoiDataset(root, cache=cache_path, modalities=["MR"], roi_shape="rect")
    expected = [r for r in range(N) if manifest.modality[r] == "MR" and r not in (FAILED_ROW, PENDING_ROW)]
    assert dataset.indices.tolist() == expected and 0 < len(expected) < 5
    for i in range(len(dataset)):
        assert manifest.modality[dataset[i]["index"]] == "MR"
        assert_own_roi(dataset[i], manifest, numbers, exact=True)


def test_every_item_without_the_done_filter_has_its_own_or_an_empty_roi(corpus):
    root, manifest, cache_path, numbers, _ = corpus
    dataset = RoiDataset(root, cache=cache_path, only_done=False, roi_shape="rect")
    assert len(dataset) == N
    for i in range(N):
        item = dataset[i]
        assert item["index"] == i
        if i in (FAILED_ROW, PENDING_ROW):
            assert item["roi"].sum() == 0 and (item["image"][0] > 0.5).any()
        else:
            assert_own_roi(item, manifest, numbers, exact=True)


def test_packed_items_filtered_from_the_middle_keep_their_own_roi(corpus, tmp_path):
    root, manifest, cache_path, numbers, _ = corpus
    store = PackedStore.create(tmp_path / "p.zarr", manifest, IntensityConfig(), shard_items=4)
    pack_corpus(store, root, progress=False)
    store.write_failed([5], ["planted failure"])  # the store leaves out a done item of the cache too
    dataset = RoiDataset(root, cache=cache_path, packed=tmp_path / "p.zarr", roi_shape="rect")
    assert dataset.indices.tolist() == [0, 1, 3, 6]
    for i in range(len(dataset)):
        assert_own_roi(dataset[i], manifest, numbers, exact=True)


def test_datamodule_train_and_validation_subsets_keep_each_items_own_roi(corpus):
    root, manifest, cache_path, numbers, _ = corpus
    dm = RoiDataModule(
        root, cache_path, input_size=32, batch_size=2, hflip=0.0, val_fraction=0.4, num_workers=0, seed=3,
        normalize="imagenet", roi_shape="rect",
    )  # fmt: skip
    dm.setup("fit")
    assert dm.val_set is not None
    seen = []
    for subset in (dm.train_set, dm.val_set):
        for i in range(len(subset)):
            item = subset[i]
            assert item["image"].shape == (3, 32, 32) and item["roi"].shape == (1, 32, 32)
            # resized to a square: the own band still covers the bright pixels, no other band does
            bright = item["image"][0] > 0.5
            assert overlap(item["roi"][0], bright) > 0.6
            assert item["item_id"] == manifest.item_id[item["index"]]
            seen.append(item["index"])
    assert sorted(seen) == [0, 1, 3, 5, 6]
