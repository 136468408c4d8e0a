"""Intensity settings follow the stores: recorded rules by default, a warning naming the fields on override."""

from __future__ import annotations

import warnings

import pytest

from data.intensity import IntensityConfig
from data.intensity_follow import (
    IntensityMismatch,
    IntensityOverride,
    follow_intensity,
    recorded_intensity,
    require_same_intensity,
)


def test_differences_name_the_fields_and_resolve_window_names():
    lung = IntensityConfig(ct_window="lung")
    assert lung.differences(IntensityConfig(ct_window=(-600, 1500))) == []  # CT_WINDOWS['lung'] = (-600, 1500)
    other = IntensityConfig(ct_window="bone", percentiles=(1, 99), per_modality={"XR": {"value_range": [0, 255]}})
    lines = lung.differences(other)
    assert [line.split(":")[0] for line in lines] == ["ct_window", "percentiles", "per_modality.XR"]
    assert lines[0] == 'ct_window: "lung" vs "bone"' and lines[1] == "percentiles: [0.5, 99.5] vs [1.0, 99.0]"
    assert IntensityConfig().to_dict() == {"ct_window": [40.0, 400.0], "percentiles": [0.5, 99.5], "per_modality": {}}


def test_recorded_intensity_of_localize_shuffled_and_imported_caches():
    localized = {"intensity": {"ct_window": "lung"}, "saliency": {}}
    assert recorded_intensity(localized).ct_window == "lung"
    assert recorded_intensity({"intensity": {}}).differences(IntensityConfig()) == []  # {} = the defaults
    shuffled = {"source": "shuffled", "from": localized, "seed": 0}
    assert recorded_intensity(shuffled).ct_window == "lung"
    assert recorded_intensity({"source": "masks", "masks_sha256": "ab"}) is None


def test_unset_run_follows_the_recorded_rules_silently():
    recorded = IntensityConfig(ct_window="lung")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert follow_intensity(None, recorded, "the cache") is recorded
        assert follow_intensity({"ct_window": [-600, 1500]}, recorded, "the cache").ct_window == (-600.0, 1500.0)
        assert follow_intensity(None, None, "nothing").differences(IntensityConfig()) == []


def test_overriding_run_is_warned_naming_the_fields_and_keeps_its_own_rules():
    with pytest.warns(IntensityOverride, match=r'the cache X.*ct_window: "bone" vs "lung"') as record:
        used = follow_intensity({"ct_window": "bone"}, IntensityConfig(ct_window="lung"), "the cache X")
    assert used.ct_window == "bone" and "percentiles" not in str(record[0].message)


def test_a_packed_store_of_other_rules_is_refused_naming_both():
    with pytest.raises(IntensityMismatch, match=r"S.zarr.*percentiles: \[1.0, 99.0\] vs \[0.5, 99.5\]"):
        require_same_intensity(IntensityConfig(percentiles=(1, 99)), IntensityConfig(), "S.zarr")
    require_same_intensity(IntensityConfig(ct_window="brain"), IntensityConfig(ct_window=(40, 80)), "S.zarr")
