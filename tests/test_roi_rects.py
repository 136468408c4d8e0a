"""The expanded ROI (the release's `masks_expanded/`): both release rules on a hand-made non-square mask, stored in
the cache at native size and read back exactly, through `RoiCache.read_mask`, the fast shard reader and RoiDataset.

Expected rectangles are worked out by hand from the release's arithmetic (module docstring of data.roi_rects):
  "sam"    (postprocess_sam.py):      c = x + w//2, n = int(w*r), [max(0, c - n//2), min(W, c + n//2))
  "coarse" (postprocess_saliency_maps.py): n = int(w*r), x0 = max(0, x - (n - w)//2), [x0, x0 + n] inclusive
"""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
import zarr

from data.dataset import RoiDataset
from data.ids import make_item_id
from data.roi_cache import FLAG_EMPTY_RECT, RoiCache
from data.roi_rects import expanded_rects, fill_rects
from data.shard_reader import ShardReader

H, W = 9, 14  # non-square: a swapped x/y cannot give the expected rectangles


def hand_mask() -> np.ndarray:
    """Three components on a 9 x 14 image."""
    mask = np.zeros((H, W), np.uint8)
    mask[1, 2:7] = 1  # A: an L, bounding rectangle x=2, y=1, w=5, h=3
    mask[1:4, 2] = 1
    mask[5:9, 10:12] = 1  # B: a 4 x 2 block, x=10, y=5, w=2, h=4
    mask[0:3, 13] = 1  # C: a one-pixel-wide line, x=13, y=0, w=1, h=3
    return mask


# Worked by hand; xyxy end-exclusive.
SAM_RATIO_1 = {
    (2, 1, 6, 3),  # A: c=(4, 2), n=(5, 3): x [4-2, 4+2) = [2, 6), y [2-1, 2+1) = [1, 3): odd sizes lose one
    (10, 5, 12, 9),  # B: c=(11, 7), n=(2, 4): x [10, 12), y [5, 9): even sizes are exact
}  # C: c=13, n=1 -> x [13, 13): empty, dropped
SAM_RATIO_2_B = (9, 3, 13, 9)  # B at ratio 2: n=(4, 8): x [11-2, 11+2), y [7-4, min(9, 7+4))


def rect_set(rects: np.ndarray) -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in r) for r in rects}


def test_sam_rule_on_a_non_square_mask():
    assert rect_set(expanded_rects(hand_mask())) == SAM_RATIO_1
    ratio2 = rect_set(expanded_rects(hand_mask(), ratio=2.0))
    assert SAM_RATIO_2_B in ratio2
    assert fill_rects(expanded_rects(hand_mask()), (H, W)).sum() == 4 * 2 + 2 * 4


def test_coarse_rule_draws_one_pixel_more_and_clips():
    got = rect_set(expanded_rects(hand_mask(), rule="coarse"))
    # B: rows [5, 5+4+1) = [5, 10) clipped to H=9; C: columns [13, 15) clipped to W=14
    assert got == {(2, 1, 8, 5), (10, 5, 13, 9), (13, 0, 14, 4)}
    with pytest.raises(ValueError, match="rect rule"):
        expanded_rects(hand_mask(), rule="tight")


def test_a_component_inside_a_hole_adds_no_rectangle():
    ring = np.zeros((12, 16), np.uint8)
    ring[2:10, 3:13] = 1
    ring[4:8, 5:11] = 0
    ring[5:7, 7:9] = 1  # an island inside the hole: not an outer contour
    assert rect_set(expanded_rects(ring)) == {(3, 2, 13, 10)}  # w=10, h=8: even, exact


def two_item_cache(tmp_path, mask_size: int = 4) -> RoiCache:
    paths = ["a.png", "b.png"]
    manifest = pd.DataFrame(
        {"item_id": [make_item_id(p, 0) for p in paths], "path": paths, "frame": 0, "modality": "XR"}
    ).assign(height=H, width=W)
    return RoiCache.create(tmp_path / "c.zarr", manifest, {"test": 1}, mask_size=mask_size, shard_items=2)


def expected_sam_rect_mask() -> np.ndarray:
    expected = np.zeros((H, W), np.uint8)
    expected[1:3, 2:6] = 1
    expected[5:9, 10:12] = 1
    return expected


def test_cache_stores_the_rectangles_at_native_size_and_reads_them_back_exactly(tmp_path):
    cache = two_item_cache(tmp_path)  # a 4 x 4 stored mask: the SAM shape is coarse, the rectangles are not
    mask = hand_mask()
    cache.write([0], [mask], [mask.astype(np.float32)], [np.zeros((0, 4))], [1.0])  # rects derived from the mask
    reopened = RoiCache.open(tmp_path / "c.zarr")
    assert rect_set(reopened.read_rects(0)) == SAM_RATIO_1
    np.testing.assert_array_equal(reopened.read_mask(0, shape="rect"), expected_sam_rect_mask())
    # at twice the size: nearest neighbour of the native-size mask, i.e. every pixel a 2 x 2 block
    np.testing.assert_array_equal(
        reopened.read_mask(0, (2 * H, 2 * W), shape="rect"), np.kron(expected_sam_rect_mask(), np.ones((2, 2)))
    )
    assert not np.array_equal(reopened.read_mask(0), mask)  # the 4 x 4 SAM shape is lossy; the rectangles are not
    assert isinstance(reopened._readers["rects"], ShardReader)  # the fast path, as for the masks
    np.testing.assert_array_equal(
        reopened._readers["rects"].read_chunk((0, 0, 0))[0], zarr.open_group(tmp_path / "c.zarr", mode="r")["rects"][0]
    )
    with pytest.raises(ValueError, match="ROI shape"):
        reopened.read_mask(0, shape="box")


def test_explicit_rectangles_capacity_and_empty_flag(tmp_path):
    cache = two_item_cache(tmp_path)
    cache.write([0], [hand_mask()], [hand_mask()], [np.zeros((0, 4))], [1.0], rects=[np.array([[0, 0, 3, 2]])])
    np.testing.assert_array_equal(cache.read_rects(0), [[0, 0, 3, 2]])
    assert cache.read_mask(0, shape="rect").sum() == 6 and not cache.read_record(0)["empty_rect"]
    thin = np.zeros((H, W), np.uint8)
    thin[2:7, 4] = 1  # one pixel wide: the release's "sam" rule leaves nothing
    cache.write([1], [thin], [thin], [np.zeros((0, 4))], [1.0])
    assert cache.read_record(1)["empty_rect"] and not cache.read_record(1)["empty_roi"]
    assert zarr.open_group(tmp_path / "c.zarr", mode="r")["flags"][1] & FLAG_EMPTY_RECT
    with pytest.raises(ValueError, match="at most 32"):
        cache.write([0], [thin], [thin], [np.zeros((0, 4))], [1.0], rects=[np.zeros((33, 4))])


def test_old_cache_without_rectangles_is_refused_with_the_reason(tmp_path):
    two_item_cache(tmp_path)
    zarr.open_group(tmp_path / "c.zarr", mode="r+").attrs["schema_version"] = 1
    with pytest.raises(ValueError, match=r"version 1 \(made before the expanded ROI.*new cache"):
        RoiCache.open(tmp_path / "c.zarr")


def test_dataset_serves_either_shape(tmp_path):
    (tmp_path / "corpus").mkdir()
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(tmp_path / "corpus" / name), np.arange(H * W, dtype=np.uint8).reshape(H, W))
    cache = two_item_cache(tmp_path)
    cache.write([0], [hand_mask()], [hand_mask()], [np.zeros((0, 4))], [1.0])
    rect = RoiDataset(tmp_path / "corpus", cache=cache, roi_shape="rect")[0]["roi"]
    sam = RoiDataset(tmp_path / "corpus", cache=cache)[0]["roi"]
    np.testing.assert_array_equal(rect[0].numpy(), expected_sam_rect_mask())
    np.testing.assert_array_equal(sam[0].numpy(), cache.read_mask(0))
    with pytest.raises(ValueError, match="roi_shape"):
        RoiDataset(tmp_path / "corpus", cache=cache, roi_shape="box")
