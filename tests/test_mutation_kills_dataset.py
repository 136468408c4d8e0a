"""RoiDataset cases for `make mutate MODULE=data/dataset.py`: channel handling (grey kept or repeated, RGB to
ITU-R 601 luma), items without a cache, the manifest given as a file, and the exact refusal messages."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from data.dataset import RoiDataset
from data.manifest import scan_corpus
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
