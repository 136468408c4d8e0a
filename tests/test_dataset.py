"""RoiDataset: image + cached ROI, joint v2 transforms, done-only filtering, worker processes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from data.dataset import RoiDataset
from data.manifest import scan_corpus
from data.roi_cache import RoiCache


@pytest.fixture
def corpus_and_cache(tmp_path):
    """Grey PNGs whose left half is bright; the cached ROI is exactly that bright half (items 0-4 done)."""
    root = tmp_path / "corpus" / "xray"
    root.mkdir(parents=True)
    for i in range(6):
        img = np.zeros((40, 60), np.uint8)
        img[:, :30] = 200 + i
        img[0, 59] = 10  # some dynamic range on the dark side
        cv2.imwrite(str(root / f"img_{i}.png"), img)
    manifest, _ = scan_corpus(tmp_path / "corpus", progress=False)
    cache = RoiCache.create(tmp_path / "c.zarr", manifest, {"test": 1}, mask_size=32)
    rois = [np.pad(np.ones((40, 30), np.uint8), ((0, 0), (0, 30))) for _ in range(5)]
    cache.write(range(5), rois, [r.astype(np.float32) for r in rois], [np.array([[0, 0, 30, 40]])] * 5, [1.0] * 5)
    return tmp_path / "corpus", manifest, tmp_path / "c.zarr"


def test_items_pair_image_and_roi(corpus_and_cache):
    corpus, manifest, cache_path = corpus_and_cache
    dataset = RoiDataset(corpus, cache=cache_path)
    assert len(dataset) == 5  # item 5 is still pending
    item = dataset[2]
    assert item["image"].shape == (3, 40, 60) and item["image"].dtype == torch.float32
    assert item["roi"].shape == (1, 40, 60) and item["roi"].dtype == torch.uint8
    assert item["item_id"] == manifest.item_id[item["index"]]
    bright = item["image"][0] > 0.5
    assert torch.equal(bright, item["roi"][0].bool())  # the ROI sits on the bright half
    assert len(RoiDataset(corpus, cache=cache_path, only_done=False)) == 6
    without_cache = RoiDataset(corpus, manifest=manifest)
    assert len(without_cache) == 6 and without_cache[0]["roi"].sum() == 0


def test_joint_transform_moves_the_mask_with_the_image(corpus_and_cache):
    corpus, _, cache_path = corpus_and_cache
    transform = v2.Compose([v2.RandomHorizontalFlip(p=1.0), v2.RandomResizedCrop((32, 32), scale=(0.5, 1.0))])
    dataset = RoiDataset(corpus, cache=cache_path, transform=transform)
    torch.manual_seed(0)
    for i in range(len(dataset)):
        item = dataset[i]
        assert item["image"].shape == (3, 32, 32) and item["roi"].shape == (1, 32, 32)
        bright = item["image"][0] > 0.5
        roi = item["roi"][0].bool()
        assert (bright == roi).float().mean() > 0.9  # still aligned after flip + crop (edges interpolate)


def test_dataloader_with_worker_processes(corpus_and_cache):
    corpus, _, cache_path = corpus_and_cache
    dataset = RoiDataset(corpus, cache=cache_path, transform=v2.Resize((32, 32)))
    loader = DataLoader(dataset, batch_size=2, num_workers=2)  # the default (fork) context users get
    batches = list(loader)
    assert sum(len(b["item_id"]) for b in batches) == 5
    assert batches[0]["image"].shape == (2, 3, 32, 32) and batches[0]["roi"].shape == (2, 1, 32, 32)
    assert all(b["roi"].sum() > 0 for b in batches)


def test_manifest_that_does_not_match_the_cache_is_refused(corpus_and_cache):
    corpus, manifest, cache_path = corpus_and_cache
    with pytest.raises(ValueError, match="differ"):
        RoiDataset(corpus, manifest=manifest.iloc[::-1], cache=cache_path)
    with pytest.raises(ValueError, match="items"):
        RoiDataset(corpus, manifest=manifest.iloc[:3], cache=cache_path)
