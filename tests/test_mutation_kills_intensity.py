"""Sharper tests of data/intensity.py, written for the mutants `make mutate MODULE=data/intensity.py` left alive:
the radix-select percentiles against numpy where float32 rounding shows, the large-image path, the rules' checks,
their records (`to_dict`) and the lines that name a difference. Expected values are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

import data.intensity as intensity
from data.intensity import (
    LARGE_IMAGE_PIXELS,
    IntensityConfig,
    IntensityRule,
    _chunked_percentiles,
    normalize,
    percentiles,
)


# ------------------------------------------------------------------------------------------ percentiles
def test_chunked_percentiles_round_as_numpy_where_float32_loses_digits():
    """Values of wide magnitudes: (b - a) in float32 drops a's digits, so only numpy's own dtypes give its numbers."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        values = (rng.standard_normal(37) * 10 ** rng.uniform(-3, 8, 37)).astype(np.float32)
        q = rng.uniform(0, 100, 5)
        np.testing.assert_array_equal(_chunked_percentiles(values, q, chunk=8), np.percentile(values, q))
    # gamma exactly 0.5: numpy takes b - (b - a) / 2 = 5e7 (b - a rounds to 1e8 in float32), not a + (b - a) / 2
    three = np.array([0.1, 1e8, 2e8], np.float32)
    assert _chunked_percentiles(three, [25.0], chunk=2)[0] == np.percentile(three, 25.0) == 5e7


def test_chunked_percentiles_by_hand_next_to_the_top_and_of_an_image():
    # 11 values 0..10: the 95th percentile lies halfway between ranks 9 and 10
    assert _chunked_percentiles(np.arange(11, dtype=np.float32), [95.0], chunk=4).tolist() == [9.5]
    image = np.arange(35, dtype=np.float32).reshape(5, 7)[::-1]  # an (H, W) image, rows reversed
    assert _chunked_percentiles(image, [0.0, 50.0, 100.0], chunk=6).tolist() == [0.0, 17.0, 34.0]


def test_only_large_float32_images_take_the_chunked_path(monkeypatch):
    calls = []

    def spy(values, q):
        calls.append(values.size)
        return _chunked_percentiles(values, q)

    monkeypatch.setattr(intensity, "_chunked_percentiles", spy)
    large = np.random.default_rng(1).standard_normal(LARGE_IMAGE_PIXELS + 1, dtype=np.float32)
    np.testing.assert_array_equal(percentiles(large, (0.5, 99.5)), np.percentile(large, (0.5, 99.5)))
    assert calls == [LARGE_IMAGE_PIXELS + 1]
    percentiles(large[:LARGE_IMAGE_PIXELS], (1.0, 99.0))  # exactly the bound: numpy's
    percentiles(large[:100], (1.0, 99.0))  # small float32
    assert calls == [LARGE_IMAGE_PIXELS + 1]


# ------------------------------------------------------------------------------------------ normalize
def test_a_flat_image_with_infinities_maps_plus_inf_to_1():
    pixels = np.array([[7.0, 7.0, np.inf], [7.0, -np.inf, np.nan]], np.float32)
    for modality in ("MR", "XR"):  # the percentile rule: low == high == 7
        assert normalize(pixels, modality).tolist() == [[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]


def test_bounds_of_an_image_without_finite_values_are_0_and_1():
    assert IntensityRule(percentiles=(1.0, 99.0)).bounds(np.array([], np.float32)) == (0.0, 1.0)


# ------------------------------------------------------------------------------------------ rules
def test_rule_checks_at_their_edges():
    IntensityRule(window=(40.0, 0.5))  # a narrow window is a window
    with pytest.raises(ValueError, match=r"^CT window width must be positive, got 0\.0$"):
        IntensityRule(window=(40.0, 0.0))
    IntensityRule(percentiles=(0.0, 100.0))
    for bad in ((5.0, 5.0), (1.0, 100.5)):
        with pytest.raises(ValueError, match=r"^percentiles must satisfy 0 <= low < high <= 100"):
            IntensityRule(percentiles=bad)
    with pytest.raises(ValueError, match=r"^value_range must satisfy low < high, got \(5\.0, 5\.0\)$"):
        IntensityRule(value_range=(5.0, 5.0))
    with pytest.raises(
        ValueError, match=r"^intensity: .*unexpected.*; fields are ct_window, percentiles, per_modality$"
    ):
        IntensityConfig.from_fields({"window": "lung"})


def test_rule_for_picks_the_rgb_default_by_the_8_bit_range():
    config = IntensityConfig(percentiles=(2.0, 98.0))
    assert config.rule_for("MR") == IntensityRule(percentiles=(2.0, 98.0))  # grey by default
    assert config.rule_for("XR", rgb=True, max_value=255.0) == IntensityRule(value_range=(0.0, 255.0))
    assert config.rule_for("XR", rgb=True, max_value=256.0) == IntensityRule(percentiles=(2.0, 98.0))


def test_per_modality_rules_from_yaml_lists_and_names():
    config = IntensityConfig(per_modality={"xr": {"percentiles": [1, 99]}, "CT": {"window": "lung"}})
    assert config.per_modality["XR"] == IntensityRule(percentiles=(1, 99))  # lists become tuples
    assert config.per_modality["CT"] == IntensityRule(window="lung")  # a name stays a name
    assert config.rule_for("ct") == IntensityRule(window="lung")


def test_to_dict_writes_every_rule_with_windows_resolved():
    config = IntensityConfig(
        ct_window="brain",
        per_modality={"CT": {"window": "lung"}, "XR": {"percentiles": [1, 99]}, "US": {"value_range": [0, 255]}},
    )
    assert config.to_dict() == {
        "ct_window": [40.0, 80.0],
        "percentiles": [0.5, 99.5],
        "per_modality": {
            "CT": {"window": [-600.0, 1500.0]},
            "US": {"value_range": [0.0, 255.0]},
            "XR": {"percentiles": [1.0, 99.0]},
        },
    }


def test_differences_name_each_per_modality_rule_as_written():
    lung = IntensityConfig(per_modality={"CT": {"window": "lung"}, "XR": {"percentiles": [1, 99]}})
    bone = IntensityConfig(per_modality={"CT": {"window": "bone"}})
    assert lung.differences(bone) == [
        'per_modality.CT: {"window": "lung"} vs {"window": "bone"}',
        'per_modality.XR: {"percentiles": [1.0, 99.0]} vs <none>',
    ]
    # the same window by name and by (level, width) maps alike: no difference
    same = IntensityConfig(per_modality={"CT": {"window": [-600, 1500]}, "XR": IntensityRule(percentiles=(1, 99))})
    assert lung.differences(same) == [] and same.differences(lung) == []


def test_equal_percentiles_fall_back_to_the_full_range():
    """Over 99.5% background: both percentiles are 0, so the rule maps min..max instead (a 5 is then half-way)."""
    mostly_zero = np.zeros((100, 100), np.float32)
    mostly_zero[0, :3], mostly_zero[1, :3] = 5.0, 10.0  # 6 of 10000 pixels
    assert IntensityRule(percentiles=(0.5, 99.5)).bounds(mostly_zero) == (0.0, 10.0)
    assert normalize(mostly_zero, "MR")[0, 0] == 0.5
