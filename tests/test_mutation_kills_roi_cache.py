"""Kill tests for data/roi_cache.py's mutation survivors (issue 30): every expected value is worked out by hand on
small non-square items, written out of order, with flags, presence and failures chosen so that no two fields agree."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import zarr

from data.ids import make_item_id
from data.provenance import ProvenanceMismatch, code_version
from data.roi_cache import (
    FLAG_ABSENT,
    FLAG_EMPTY_RECT,
    FLAG_EMPTY_ROI,
    FLAG_SERIES_PASS,
    CacheGeometry,
    RoiCache,
)

PROV = {"clip": {"id": "local-dir:/m", "sha256": "cd34"}, "saliency": {"beta": 0.1}}
SIZES = [(6, 10), (8, 5), (7, 9), (5, 12), (9, 6)]  # every item non-square, each of its own size


def manifest_of(sizes=SIZES, keyed: bool = False) -> pd.DataFrame:
    paths = [f"s/img_{i}.png" for i in range(len(sizes))]
    table = pd.DataFrame(
        {
            "item_id": [make_item_id(p, 0) for p in paths],
            "path": paths,
            "frame": 0,
            "modality": ["CT", "MR", "XR", "CT", "US"][: len(sizes)],
            "height": [h for h, _ in sizes],
            "width": [w for _, w in sizes],
        }
    )
    if keyed:
        table["patient_key"] = [f"p{i}" for i in range(len(sizes))]
        table["study_key"] = [f"s{i}" for i in range(len(sizes))]
        table["series_key"] = [f"r{i}" for i in range(len(sizes))]
        table["slice_index"] = 0
        table["n_slices"] = 1
    return table


def new_cache(tmp_path, name: str = "c.zarr", **sizes) -> RoiCache:
    sizes = {"mask_size": 12, "shard_items": 2, **sizes}
    return RoiCache.create(tmp_path / name, manifest_of(keyed=True), PROV, **sizes)


def block_mask(h: int, w: int) -> np.ndarray:
    """A 2 x 2 block at rows 1-2, columns 2-3: one rectangle, non-empty under the release's rule."""
    mask = np.zeros((h, w), np.uint8)
    mask[1:3, 2:4] = 1
    return mask


def write_items(cache: RoiCache, indices, **kwargs) -> None:
    masks = [block_mask(*SIZES[i]) for i in indices]
    boxes = [np.zeros((0, 4))] * len(indices)
    cache.write(indices, masks, [m.astype(np.float32) for m in masks], boxes, [0.5] * len(indices), **kwargs)


# ---------------------------------------------------------------- geometry and creation
def test_geometry_defaults_accepts_one_and_refuses_zero_by_name():
    assert CacheGeometry() == CacheGeometry(mask_size=256, max_boxes=4, max_rects=32, shard_items=256)
    CacheGeometry(mask_size=1, max_boxes=1, max_rects=1, shard_items=1)  # 1 is allowed
    for name in ("mask_size", "max_boxes", "max_rects", "shard_items"):
        with pytest.raises(ValueError) as err:
            CacheGeometry(**{name: 0})
        assert str(err.value) == f"cache geometry: {name} must be >= 1, got 0"


def test_create_takes_a_geometry_keywords_override_it_and_unknown_sizes_are_refused(tmp_path):
    geometry = CacheGeometry(mask_size=8, max_boxes=2, max_rects=3, shard_items=4)
    cache = RoiCache.create(tmp_path / "c.zarr", manifest_of(), PROV, geometry=geometry, mask_size=6, info={"run": 7})
    assert cache.geometry == CacheGeometry(mask_size=6, max_boxes=2, max_rects=3, shard_items=4)
    assert (cache.mask_size, cache.max_boxes, cache.max_rects, cache.shard_items) == (6, 2, 3, 4)
    g = zarr.open_group(tmp_path / "c.zarr", mode="r")
    assert {k: g.attrs[k] for k in ("mask_size", "max_boxes", "max_rects", "shard_items")} == {
        "mask_size": 6,
        "max_boxes": 2,
        "max_rects": 3,
        "shard_items": 4,
    }
    assert g.attrs["info"] == {"code_version": code_version(), "run": 7} == cache.info
    assert g["mask"].shape == (5, 6, 6) and g["saliency"].shape == (5, 6, 6) and g["rects"].shape == (5, 3, 4)
    assert g["boxes"].shape == (5, 2, 4) and g["boxes"].chunks == (4, 2, 4)
    for name in ("score", "flags", "presence"):
        assert g[name].shape == (5,) and g[name].chunks == (4,), name
    # unwritten items: no boxes, no rectangles, no score, no presence, no flag
    assert np.isnan(g["boxes"][:]).all() and np.isnan(g["rects"][:]).all()
    assert np.isnan(g["score"][:]).all() and np.isnan(g["presence"][:]).all() and (g["flags"][:] == 0).all()
    assert g["flags"].dtype == np.uint8 and g["score"].dtype == np.float32 and g["presence"].dtype == np.float32
    assert g["boxes"].dtype == np.float32 and g["mask"].dtype == np.uint8 and g["saliency"].dtype == np.uint8
    with pytest.raises(TypeError, match=r"^RoiCache.create: .*'mask_side'.*; sizes are CacheGeometry's fields$"):
        RoiCache.create(tmp_path / "d.zarr", manifest_of(), PROV, mask_side=6)
    plain = RoiCache.create(tmp_path / "e.zarr", manifest_of(), PROV)  # no geometry, no sizes: the defaults
    assert plain.geometry == CacheGeometry() and plain.info == {"code_version": code_version()}


def test_open_refuses_another_kind_of_store_and_an_unknown_schema_version(tmp_path):
    new_cache(tmp_path)
    path = tmp_path / "c.zarr"
    zarr.open_group(path, mode="r+").attrs["kind"] = "packed images"
    with pytest.raises(ValueError) as err:
        RoiCache.open(path)
    assert str(err.value) == f"{path}: a packed images store, not a ROI cache"
    zarr.open_group(path, mode="r+").attrs["kind"] = ""  # empty kind: a ROI cache
    zarr.open_group(path, mode="r+").attrs["schema_version"] = 4
    with pytest.raises(ValueError) as err:
        RoiCache.open(path)
    assert str(err.value) == (
        f"{path}: ROI cache schema version 4; this code reads version 3. Write a new cache (localize run / "
        "localize import into a new path); an old one cannot be converted exactly."
    )


def test_open_is_read_only_by_default_and_checks_provenance_only_when_given(tmp_path):
    new_cache(tmp_path)
    path = tmp_path / "c.zarr"
    assert RoiCache.open(path)._group.read_only
    assert not RoiCache.open(path, "r+", provenance=PROV)._group.read_only
    with pytest.raises(ProvenanceMismatch) as err:
        RoiCache.open(path, provenance={**PROV, "saliency": {"beta": 0.2}})
    assert str(err.value) == (
        f"{path}: this run's localizer configuration differs from the one the cache was made with:\n"
        "  saliency.beta: cache has 0.1, this run has 0.2\n"
        "Write to a new cache path (--cache NEW.zarr) or delete this cache to start over."
    )


def test_the_warning_for_a_cache_without_grouping_keys_names_the_schema_and_the_fix(tmp_path, caplog):
    RoiCache.create(tmp_path / "old.zarr", manifest_of(), PROV, mask_size=4)
    RoiCache.create(tmp_path / "new.zarr", manifest_of(keyed=True), PROV, mask_size=4)
    zarr.open_group(tmp_path / "old.zarr", mode="r+").attrs["schema_version"] = 2
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="data.roi_cache"):
        RoiCache.open(tmp_path / "new.zarr")
        assert caplog.records == []
        RoiCache.open(tmp_path / "old.zarr")
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'old.zarr'}: ROI cache without patient/study/series keys (schema 2, or made from a manifest "
        "without them): every path counts as its own patient. Add them from a new scan of the corpus: "
        "RoiCache.open(CACHE, 'r+').add_grouping_keys(read_manifest(MANIFEST)) (docs/CORPUS.md)"
    ]


# ---------------------------------------------------------------- writing
def test_flags_presence_and_reasons_of_items_written_out_of_order(tmp_path):
    cache = new_cache(tmp_path)
    thin = np.zeros(SIZES[3], np.uint8)
    thin[1:4, 5] = 1  # one pixel wide: no rectangle under the release's "sam" rule -> FLAG_EMPTY_RECT
    cache.write_failed([3, 1], ["unreadable", "truncated"])
    cache.write(
        [3, 0],
        [thin, block_mask(*SIZES[0])],
        [thin, block_mask(*SIZES[0])],
        [np.zeros((0, 4))] * 2,
        [0.25, 0.75],
        flags=[FLAG_ABSENT | FLAG_SERIES_PASS, FLAG_EMPTY_ROI],
        presence=[0.125, -0.5],
    )
    g = zarr.open_group(tmp_path / "c.zarr", mode="r")
    assert g["flags"][:].tolist() == [FLAG_EMPTY_ROI, 0, 0, FLAG_ABSENT | FLAG_SERIES_PASS | FLAG_EMPTY_RECT, 0]
    np.testing.assert_array_equal(g["presence"][:], [-0.5, np.nan, np.nan, 0.125, np.nan])
    np.testing.assert_array_equal(g["score"][:], [0.75, np.nan, np.nan, 0.25, np.nan])
    assert g["reason"][:].tolist() == ["", "truncated", "", "", ""]  # a done item's failure reason is cleared
    assert g["status"][:].tolist() == [1, 2, 0, 1, 0]
    write_items(cache, [0])  # no flags, no presence: flags from the rectangles only, presence left as it was
    assert g["flags"][0] == 0 and g["presence"][0] == -0.5
    write_items(cache, [2], flags=[FLAG_SERIES_PASS], presence=[0.875])
    assert g["flags"][2] == FLAG_SERIES_PASS and g["presence"][2] == 0.875
    np.testing.assert_array_equal(cache.presence(), [-0.5, np.nan, 0.875, 0.125, np.nan])
    assert cache.presence().dtype == np.float32


def test_a_cache_without_the_presence_array_reads_nan_and_ignores_presence(tmp_path):
    cache = new_cache(tmp_path)
    del zarr.open_group(tmp_path / "c.zarr", mode="r+")["presence"]
    old = RoiCache.open(tmp_path / "c.zarr", "r+")
    write_items(old, [1, 4], presence=[0.5, 0.25])  # no array to write them to: no error
    got = old.presence()
    assert got.shape == (5,) and got.dtype == np.float32 and np.isnan(got).all()
    assert np.isnan(old.table().presence.to_numpy()).all()
    assert cache.n_items == 5


def test_saliency_is_stored_rounded_clipped_and_uint8_passes_through(tmp_path):
    cache = RoiCache.create(tmp_path / "c.zarr", manifest_of([(2, 3), (2, 3)]), PROV, mask_size=3)
    sal = np.array([[0.5, 2.0, -1.0], [np.nan, 0.1, 1.0]], np.float32)
    as_u8 = np.array([[7, 200, 0], [255, 1, 128]], np.uint8)
    masks = [np.array([[True, False, True], [False, False, True]])] * 2  # bool masks are stored 0/1
    cache.write([1, 0], masks, [sal, as_u8], [np.zeros((0, 4))] * 2, [0.0, 0.0])
    g = zarr.open_group(tmp_path / "c.zarr", mode="r")
    # 0.5 * 255 = 127.5 rounds to 128; 2 clips to 255, -1 and NaN to 0; 0.1 * 255 = 25.5 -> 26
    expected_1 = np.array([[128, 255, 0], [0, 26, 255]], np.uint8)
    np.testing.assert_array_equal(rows_bilinear_copies(g["saliency"][1], (2, 3)), expected_1)
    np.testing.assert_array_equal(rows_bilinear_copies(g["saliency"][0], (2, 3)), as_u8)
    np.testing.assert_allclose(cache.read_saliency(0, (3, 3)), g["saliency"][0] / 255.0, rtol=1e-6)
    assert cache.read_saliency(0).dtype == np.float32 and cache.read_saliency(0).shape == (2, 3)
    np.testing.assert_array_equal(cache.read_mask(1), [[1, 0, 1], [0, 0, 1]])
    with pytest.raises(ValueError, match=r"^expected a 2-D array, got shape \(1, 2, 3\)$"):
        cache.write([0], [np.ones((1, 2, 3))], [sal], [np.zeros((0, 4))], [0.0], rects=[np.zeros((0, 4))])


def rows_bilinear_copies(stored_ss: np.ndarray, size_hw) -> np.ndarray:
    """The rows of a 3 x 3 stored array that are copies of a 2 x 3 item's rows: bilinear 2 -> 3 rows samples source
    rows (i + 0.5) * 2 / 3 - 0.5 = -1/6, 1/2, 7/6, so rows 0 and 2 are the clamped rows 0 and 1 (row 1 mixes)."""
    assert stored_ss.shape == (3, 3) and size_hw == (2, 3)
    return stored_ss[[0, 2]]


def test_boxes_are_normalised_by_each_items_own_width_and_height(tmp_path):
    cache = new_cache(tmp_path, max_boxes=2, max_rects=3)
    boxes = [np.array([1.0, 2.0, 4.0, 6.0]), np.array([[0.0, 0.0, 10.0, 6.0], [5.0, 3.0, 6.0, 4.0]])]  # flat: one box
    write_items_with_boxes(cache, [1, 0], boxes)
    g = zarr.open_group(tmp_path / "c.zarr", mode="r")
    # item 1 is 8 high, 5 wide; item 0 is 6 high, 10 wide
    np.testing.assert_allclose(g["boxes"][1], [[0.2, 0.25, 0.8, 0.75], [np.nan] * 4])
    np.testing.assert_allclose(g["boxes"][0], [[0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 0.6, 4 / 6]], rtol=1e-6)
    np.testing.assert_allclose(cache.read_boxes(1), [[1.0, 2.0, 4.0, 6.0]], rtol=1e-6)
    np.testing.assert_allclose(cache.read_boxes(0), boxes[1], rtol=1e-6)
    assert cache.read_boxes(0).dtype == np.float32  # the stored precision, not widened
    with pytest.raises(ValueError) as err:
        write_items_with_boxes(cache, [2, 4], [np.zeros((2, 4)), np.zeros((3, 4))])
    assert str(err.value) == "item 4: 3 boxes, the cache holds at most 2"
    masks = [block_mask(*SIZES[i]) for i in (3, 1)]
    with pytest.raises(ValueError) as err:
        cache.write([3, 1], masks, masks, [np.zeros((0, 4))] * 2, [0.0] * 2, rects=[np.zeros((1, 4)), np.ones((4, 4))])
    assert str(err.value) == "item 1: 4 expanded-ROI rectangles, the cache holds at most 3"


def write_items_with_boxes(cache: RoiCache, indices, boxes) -> None:
    masks = [block_mask(*SIZES[i]) for i in indices]
    cache.write(indices, masks, masks, boxes, [0.0] * len(indices))


def test_rectangles_come_back_in_pixels_of_a_non_square_image_and_fill_at_any_size(tmp_path):
    cache = new_cache(tmp_path)
    rects = [np.array([[1, 2, 4, 7]]), np.array([[3, 0, 9, 2], [0, 4, 2, 5], [3, 2, 5, 4]])]
    masks = [block_mask(*SIZES[i]) for i in (1, 2)]
    cache.write([1, 2], masks, masks, [np.zeros((0, 4))] * 2, [0.0] * 2, rects=rects)
    np.testing.assert_array_equal(cache.read_rects(1), [[1, 2, 4, 7]])  # item 1: 8 x 5
    assert cache.read_rects(1).dtype == np.int64  # whole pixels
    np.testing.assert_array_equal(cache.read_rects(2), rects[1])  # item 2: 7 x 9
    expected = np.zeros((7, 9), np.uint8)
    expected[0:2, 3:9] = 1
    expected[4:5, 0:2] = 1
    expected[2:4, 3:5] = 1  # with the first: an L, whose inner corner bilinear resizing would fill
    np.testing.assert_array_equal(cache.read_mask(2, shape="rect"), expected)
    # drawn at 7 x 9, then nearest to 14 x 9 (twice the rows): every row doubled, the columns kept
    np.testing.assert_array_equal(cache.read_mask(2, (14, 9), shape="rect"), np.repeat(expected, 2, axis=0))
    # to 5 x 13, nearest-exact: output pixel i takes source floor((i + 0.5) * in / out)
    rows, cols = (
        np.floor((np.arange(5) + 0.5) * 7 / 5).astype(int),
        np.floor((np.arange(13) + 0.5) * 9 / 13).astype(int),
    )
    np.testing.assert_array_equal(cache.read_mask(2, (5, 13), shape="rect"), expected[np.ix_(rows, cols)])
    assert cache.read_rects(3).shape == (0, 4) and cache.read_mask(3, shape="rect").sum() == 0


# ---------------------------------------------------------------- bookkeeping
def test_summary_record_and_table_keep_every_flag_apart(tmp_path):
    cache = new_cache(tmp_path)
    flags = [FLAG_EMPTY_ROI | FLAG_ABSENT, FLAG_ABSENT, FLAG_SERIES_PASS, FLAG_EMPTY_ROI | FLAG_ABSENT]
    write_items(cache, [4, 0, 2, 1], flags=flags)
    cache.write_failed([1], ["oom"])  # its flags stay stored but a failed item counts for nothing
    assert cache.summary() == {"items": 5, "done": 3, "failed": 1, "pending": 1, "empty_roi": 1, "absent": 2}
    manifest = manifest_of()
    record = cache.read_record(4)
    assert record == {
        "index": 4,
        "item_id": manifest.item_id[4],
        "modality": "US",
        "status": "done",
        "empty_roi": True,
        "empty_rect": False,
        "absent": True,
        "score": 0.5,
        "reason": "",
        "size_hw": (9, 6),
    }
    assert isinstance(record["index"], int) and isinstance(record["score"], float)
    assert cache.read_record(1)["status"] == "failed" and cache.read_record(1)["reason"] == "oom"
    assert cache.read_record(3)["status"] == "pending" and np.isnan(cache.read_record(3)["score"])
    assert not cache.read_record(2)["absent"] and not cache.read_record(2)["empty_roi"]  # series pass only
    table = cache.table()
    assert table.status.tolist() == ["done", "failed", "done", "pending", "done"]
    assert list(table.status.cat.categories) == ["pending", "done", "failed"]
    assert table.empty_roi.tolist() == [False, True, False, False, True]
    assert table.absent.tolist() == [True, True, False, False, True]
    assert table.series_pass.tolist() == [False, False, True, False, False]
    assert table.empty_rect.tolist() == [False] * 5
    assert table.reason.tolist() == ["", "oom", "", "", ""]
    np.testing.assert_array_equal(table.score.to_numpy(), [0.5, 0.5, 0.5, np.nan, 0.5])
    assert table.height.tolist() == [h for h, _ in SIZES] and table.width.tolist() == [w for _, w in SIZES]


def test_repr_and_default_read_sizes(tmp_path):
    cache = new_cache(tmp_path)
    assert repr(cache) == f"RoiCache({str(tmp_path / 'c.zarr')!r}, items=5, mask_size=12)"
    write_items(cache, [3])
    assert cache.read_mask(3).shape == (5, 12) and cache.read_saliency(3).shape == (5, 12)
    assert cache.read_mask(3, (np.int64(4), 7.0)).shape == (4, 7)
    first = cache.read_mask(3, (12, 12))  # the stored size: a copy, not the store's buffer
    first[:] = 7
    assert cache.read_mask(3, (12, 12)).max() == 1


# ---------------------------------------------------------------- legacy provenance
@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        ({"clip": 1, "code_version": "0.2.0"}, {"clip": 1, "localizer_version": 2}),
        ({"clip": 1, "code_version": "0.11.3"}, {"clip": 1, "localizer_version": 11}),
        ({"clip": 1, "code_version": "1.2.0"}, {"clip": 1, "localizer_version": "1.2.0"}),
        ({"clip": 1, "code_version": "0.2.0", "localizer_version": 3}, None),  # already current
        ({"code_version": "0.2.0", "sam": 1}, None),  # not a localizer's provenance
        ({"clip": 1, "code_version": 2}, None),  # not a version string
    ],
)
def test_a_legacy_provenance_gets_todays_key_names(tmp_path, stored, expected):
    new_cache(tmp_path)
    zarr.open_group(tmp_path / "c.zarr", mode="r+").attrs["provenance"] = stored
    got = RoiCache.open(tmp_path / "c.zarr").provenance
    assert got == (stored if expected is None else expected)
    assert list(got) == list(stored if expected is None else expected)


def test_saliency_is_read_back_bilinear_at_the_items_size(tmp_path):
    cache = RoiCache.create(tmp_path / "c.zarr", manifest_of([(2, 3)]), PROV, mask_size=3)
    stored = np.array([[0, 0, 0], [200, 200, 200], [100, 100, 100]], np.uint8)  # any size: this one is S x S
    cache.write([0], [np.ones((2, 3), np.uint8)], [stored], [np.zeros((0, 4))], [0.0])
    # 3 -> 2 rows, bilinear: source rows (i + 0.5) * 3 / 2 - 0.5 = 0.25, 1.75 -> 0.75 * 0 + 0.25 * 200 = 50 and
    # 0.25 * 200 + 0.75 * 100 = 125 (nearest would give 0 and 100)
    got = cache.read_saliency(0)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, np.array([[50] * 3, [125] * 3]) / 255.0, rtol=1e-6)
    np.testing.assert_allclose(cache.read_saliency(0, (3, 3)), stored / 255.0, rtol=1e-6)


def test_an_integer_mask_at_its_own_size_is_stored_as_0_1(tmp_path):
    cache = RoiCache.create(tmp_path / "c.zarr", manifest_of([(6, 10)]), PROV, mask_size=5)
    mask = np.zeros((6, 10), np.int64)  # e.g. (labels > 0).astype(int): a 0/1 array of another dtype
    mask[0:6, 0:4] = 1
    cache.write([0], [mask], [mask.astype(np.float32)], [np.zeros((0, 4))], [1.0])
    # nearest-exact to 5 x 5: columns floor((j + 0.5) * 10 / 5) = 1, 3, 5, 7, 9 -> the first two are inside
    expected = np.zeros((5, 5), np.uint8)
    expected[:, :2] = 1
    np.testing.assert_array_equal(zarr.open_group(tmp_path / "c.zarr", mode="r")["mask"][0], expected)
