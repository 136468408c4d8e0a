"""Intensity normalisation: CT windows, percentiles, flat images, NaN / Inf, colour, per-modality rules."""

from __future__ import annotations

import numpy as np
import pytest

from data.intensity import CT_WINDOWS, IntensityConfig, IntensityRule, normalize


@pytest.mark.parametrize("window", sorted(CT_WINDOWS))
def test_ct_window_ends_map_to_0_and_1(window):
    level, width = CT_WINDOWS[window]
    hu = np.array([[level - width / 2, level, level + width / 2], [-5000, level + width / 4, 5000]], np.float32)
    image = normalize(hu, "CT", IntensityConfig(ct_window=window))
    np.testing.assert_allclose(image, [[0, 0.5, 1], [0, 0.75, 1]], atol=1e-6)


def test_ct_window_as_level_width_pair():
    image = normalize(np.array([[0, 50, 100]], np.float32), "CT", IntensityConfig(ct_window=(50, 100)))
    np.testing.assert_allclose(image, [[0, 0.5, 1]])


def test_percentiles_scale_each_image():
    values = np.arange(1000, dtype=np.float32).reshape(20, 50)
    image = normalize(values, "MR", IntensityConfig(percentiles=(10, 90)))
    low, high = np.percentile(values, [10, 90])
    np.testing.assert_allclose(image, np.clip((values - low) / (high - low), 0, 1), atol=1e-6)
    assert (image == 0).sum() >= 100 and (image == 1).sum() >= 100
    # Affine changes of MR intensity do not change the image.
    np.testing.assert_allclose(normalize(values * 3 + 7, "MR", IntensityConfig(percentiles=(10, 90))), image, atol=1e-5)


def test_flat_and_mostly_flat_images():
    assert normalize(np.full((4, 4), 7.0), "MR").max() == 0
    mostly_zero = np.zeros((100, 100), np.float32)
    mostly_zero[0, :5] = 10  # fewer than 0.5% of pixels: percentiles are (0, 0)
    image = normalize(mostly_zero, "XR")
    assert image.max() == 1 and image[0, 0] == 1 and image[50, 50] == 0


def test_nan_inf_cleaned_for_every_rule():
    pixels = np.array([[np.nan, np.inf, -np.inf], [0, 50, 100]], np.float32)
    for modality in ("CT", "MR", "XR", "OT"):
        image = normalize(pixels, modality)
        assert np.isfinite(image).all() and image.dtype == np.float32
        assert (image[0, 0], image[0, 1], image[0, 2]) == (0.0, 1.0, 0.0)
    all_nan = normalize(np.full((3, 3), np.nan, np.float32), "MR")
    assert np.array_equal(all_nan, np.zeros((3, 3), np.float32))


def test_rgb_images():
    rgb8 = np.zeros((2, 2, 3), np.float32)
    rgb8[0, 0] = (255, 51, 0)
    np.testing.assert_allclose(normalize(rgb8, "OT")[0, 0], [1.0, 0.2, 0.0])
    rgb16 = rgb8 * 200  # beyond the 8-bit range: joint percentiles keep the colour ratios
    image = normalize(rgb16, "US", IntensityConfig(percentiles=(0, 100)))
    np.testing.assert_allclose(image[0, 0], [1.0, 0.2, 0.0], atol=1e-6)


def test_per_modality_overrides():
    config = IntensityConfig(
        per_modality={
            "xr": {"value_range": [0, 4095]},  # keys are upper-cased, YAML-style mappings accepted
            "CT": IntensityRule(window="lung"),
            "MR": {"percentiles": (0, 100)},
        }
    )
    np.testing.assert_allclose(normalize(np.array([[0, 4095]], np.float32), "XR", config), [[0, 1]])
    np.testing.assert_allclose(normalize(np.array([[-1350, 150]], np.float32), "CT", config), [[0, 1]])
    np.testing.assert_allclose(normalize(np.array([[5, 15]], np.float32), "MR", config), [[0, 1]])
    assert IntensityConfig(ct_window=[40, 400], percentiles=[1, 99]) == IntensityConfig((40.0, 400.0), (1.0, 99.0))
    assert hash(config) == hash(IntensityConfig())  # usable as a cache key; overrides only affect equality
    with pytest.raises(ValueError, match="exactly one"):
        IntensityRule(window="lung", percentiles=(1, 99))
    with pytest.raises(ValueError, match="unknown CT window"):
        IntensityConfig(ct_window="liver")
    with pytest.raises(ValueError, match="percentiles"):
        IntensityConfig(percentiles=(99, 1))
    with pytest.raises(ValueError, match="shape"):
        normalize(np.zeros((2, 2, 4)), "OT")
