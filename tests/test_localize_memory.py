"""Bounded memory for large images (issue 28): working size, batches by a pixel budget, copy-free normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from data.intensity import IntensityConfig, _chunked_percentiles, normalize
from data.manifest import scan_corpus
from data.readers import load_image
from data.roi_cache import RoiCache
from localize.job import batch_slots, plan_units, process_unit, to_working_size, working_size
from localize.localizer import LocalizedItem
from tests._readers_files import write_opencv


@pytest.mark.parametrize(
    ("size_hw", "max_side", "expected"),
    [
        ((12000, 12000), 4096, (4096, 4096)),
        ((3000, 12000), 4096, (1024, 4096)),  # aspect kept, the longest side bounded
        ((12000, 3001), 4096, (4096, 1024)),  # 3001 * 4096 / 12000 = 1024.34 -> 1024
        ((4096, 100), 4096, (4096, 100)),  # not larger: untouched
        ((12000, 12000), 0, (12000, 12000)),  # 0: native
    ],
)
def test_working_size(size_hw, max_side, expected):
    assert working_size(size_hw, max_side) == expected


def test_batches_close_at_the_pixel_budget():
    sizes_hw = np.array([[100, 100]] * 5 + [[300, 300]] + [[100, 100]] * 2 + [[1000, 1000]])
    # 10,000 px each: two per slot under a budget of 25,000; the 90,000 px image alone; 8 in count otherwise
    assert batch_slots(range(9), sizes_hw, 8, 25_000) == [
        range(0, 2),
        range(2, 4),
        range(4, 5),
        range(5, 6),
        range(6, 8),
        range(8, 9),
    ]
    assert batch_slots(range(9), sizes_hw, 3, 0) == [range(0, 3), range(3, 6), range(6, 9)]  # no budget: by count
    # the budget counts working-size pixels: at a working side of 100 the 1000 x 1000 image costs 10,000 like the rest
    assert batch_slots(range(6, 9), sizes_hw, 8, 25_000, work_max_side=100) == [range(6, 8), range(8, 9)]
    assert batch_slots(range(6, 9), sizes_hw, 8, 30_000, work_max_side=100) == [range(6, 9)]
    # slots start at the shard's first item, whatever is pending
    assert batch_slots(range(4, 8), sizes_hw, 8, 25_000) == [range(4, 5), range(5, 6), range(6, 8)]


class _RecordingLocalizer:
    """Returns fixed boxes and rectangles in the pixels of the image it is given; records what it was given."""

    def __init__(self, boxes_k4, rects_k4) -> None:
        self.boxes_k4, self.rects_k4, self.seen = np.asarray(boxes_k4), np.asarray(rects_k4), []

    def __call__(self, images, modalities):
        self.seen.extend(np.array(image, copy=True) for image in images)
        return [
            LocalizedItem(np.ones(image.shape[:2], bool), np.zeros((8, 8)), self.boxes_k4, self.rects_k4, 0.5, False)
            for image in images
        ]


def _one_image_cache(tmp_path, pixels):
    corpus = tmp_path / "corpus"
    write_opencv(corpus / "xr" / "big.png", pixels)
    manifest, _ = scan_corpus(corpus, workers=0, progress=False)
    cache = RoiCache.create(tmp_path / "c.zarr", manifest, {"test": 1}, mask_size=16)
    return corpus, manifest, cache


def test_a_large_image_is_localized_at_working_size_and_written_in_native_pixels(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (300, 100)).astype(np.uint8)
    corpus, manifest, cache = _one_image_cache(tmp_path, pixels)
    localizer = _RecordingLocalizer([[2, 10, 20, 60]], [[2, 10, 20, 60]])
    (unit,) = plan_units(cache, 8, work_max_side=64)
    process_unit(unit, localizer, cache, corpus, manifest, work_max_side=64)
    (seen,) = localizer.seen
    assert seen.shape == (64, 21)  # 300 x 100 -> longest side 64: 100 * 64 / 300 = 21.3 -> 21
    # area average of the normalised image (what the models would see at that size)
    full = load_image(corpus, "xr/big.png", 0, "XR")
    np.testing.assert_allclose(seen.mean(), full.mean(), atol=2e-3)
    # x scaled by 100 / 21, y by 300 / 64 (not the same factor: a swap of the axes would show)
    sx, sy = 100 / 21, 300 / 64
    np.testing.assert_allclose(cache.read_boxes(0), [[2 * sx, 10 * sy, 20 * sx, 60 * sy]], rtol=1e-5)
    assert cache.read_rects(0).tolist() == [[round(2 * sx), round(10 * sy), round(20 * sx), round(60 * sy)]]
    assert cache.read_mask(0).shape == (300, 100)


def test_an_image_within_the_bound_is_localized_as_before(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (60, 40)).astype(np.uint8)
    corpus, manifest, cache = _one_image_cache(tmp_path, pixels)
    localizer = _RecordingLocalizer([[2.5, 10, 20, 33]], [[2, 10, 21, 33]])
    (unit,) = plan_units(cache, 8, work_max_side=64)
    process_unit(unit, localizer, cache, corpus, manifest, work_max_side=64)
    (seen,) = localizer.seen
    np.testing.assert_array_equal(seen, load_image(corpus, "xr/big.png", 0, "XR"))  # the very image, not resampled
    np.testing.assert_allclose(cache.read_boxes(0), [[2.5, 10, 20, 33]], rtol=1e-6)
    assert cache.read_rects(0).tolist() == [[2, 10, 21, 33]]
    image = np.zeros((64, 10), np.float32)
    assert to_working_size(image, 64) is image


def test_normalize_in_place_gives_the_same_values_without_a_copy():
    rng = np.random.default_rng(2)
    pixels = (rng.normal(size=(50, 60)) * 300 + 40).astype(np.float32)
    pixels[3, 4], pixels[5, 6] = np.nan, np.inf
    for modality in ("XR", "CT"):
        expected = normalize(pixels, modality)
        mine = pixels.copy()
        out = normalize(mine, modality, overwrite=True)
        assert out is mine
        np.testing.assert_array_equal(out, expected)
    frozen = pixels.copy()
    frozen.flags.writeable = False
    assert normalize(frozen, "XR", IntensityConfig(), overwrite=True) is not frozen  # read-only input: copied


@pytest.mark.parametrize("seed", range(6))
def test_chunked_percentiles_equal_numpys(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 3000))
    values = [
        rng.normal(size=n) * 1e3,
        rng.integers(0, 256, n),
        rng.integers(-1024, 3000, n),
        np.where(rng.random(n) < 0.9, 0.0, rng.random(n)),  # mostly flat
        -np.abs(rng.normal(size=n)),  # all negative
        np.full(n, 7.25),
    ][seed].astype(np.float32)
    for q in [(0.5, 99.5), (1.0, 99.0), (0.0, 100.0), (25.0, 75.0)]:
        for chunk in (7, 1 << 22):  # several chunks, and one
            got = _chunked_percentiles(values, q, chunk)
            np.testing.assert_array_equal(got, np.percentile(values, q))
            assert got.dtype == np.percentile(values, q).dtype
