"""The pretraining data module reads the expanded ROI (the MWM fork's `masks_expanded/`) by default.

The fixture's ROIs are disks. The release's expanded ROI of a disk is its filled bounding rectangle, with the
fork's rule [c - n//2, c + n//2), c = x + w//2, n = w (an odd side loses its last row/column): a rectangle that
holds every disk pixel but possibly its last row and column, and that is not the disk itself (its corners).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pretrain.datamodule import RoiDataModule
from tests.pretrain_lightning_fixtures import write_roi_corpus


@pytest.fixture(scope="module")
def roi_data(tmp_path_factory):
    return write_roi_corpus(tmp_path_factory.mktemp("roi_shape"), n=6)


def _items(roi_data, **overrides) -> dict[int, np.ndarray]:
    corpus, cache = roi_data
    dm = RoiDataModule(corpus, cache, input_size=64, batch_size=2, num_workers=0, hflip=0.0, **overrides)
    dm.setup("fit")
    out = {}
    for i in range(len(dm.train_set)):
        item = dm.train_set[i]
        if item["image"].shape[-2:] == torch.Size([64, 64]) and item["roi"].any():  # native 64x64: no resize
            out[item["index"]] = item["roi"][0].numpy().astype(bool)
    return out


def _expected_rect(disk_hw: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(disk_hw)
    y, x = ys.min(), xs.min()
    h, w = ys.max() - y + 1, xs.max() - x + 1
    rect = np.zeros_like(disk_hw)
    cy, cx = y + h // 2, x + w // 2
    rect[cy - h // 2 : cy + h // 2, cx - w // 2 : cx + w // 2] = True
    return rect


def test_default_roi_is_the_filled_rectangle_and_sam_gives_the_mask(roi_data):
    rects, masks = _items(roi_data), _items(roi_data, roi_shape="sam")
    assert rects.keys() == masks.keys() and len(rects) >= 2
    for index, disk in masks.items():
        assert not disk[disk.any(1)][:, disk.any(0)].all()  # a disk: its bounding box has empty corners
        np.testing.assert_array_equal(rects[index], _expected_rect(disk))


def test_an_unknown_roi_shape_is_refused(roi_data):
    corpus, cache = roi_data
    dm = RoiDataModule(corpus, cache, input_size=64, batch_size=2, num_workers=0, roi_shape="box")
    with pytest.raises(ValueError, match="roi_shape"):
        dm.setup("fit")
