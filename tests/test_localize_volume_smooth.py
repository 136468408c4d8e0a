"""Smoothing saliency along the slice axis (`volume.z_smooth`, localize.volume): weights [1, 2, 1] / 4 over slice
positions, renormalised where a neighbour is missing. Expected values are the closed-form weights."""

from __future__ import annotations

import numpy as np
import pytest

from localize.config import LocalizeConfig
from localize.volume import VolumeConfig, smooth_along_slices, smoothed_support

H = W = 16


def impulse_series(positions: list[int], at: int) -> np.ndarray:
    """One map per row; 1.0 at pixel (5, 7) on the row whose slice position is `at`, 0 elsewhere."""
    maps = np.zeros((len(positions), H, W), np.float32)
    maps[positions.index(at), 5, 7] = 1.0
    return maps


def test_an_impulse_spreads_to_its_neighbours_with_the_closed_form_weights():
    positions = [4, 0, 6, 2, 5, 1, 3]  # rows shuffled: neighbours are by slice position, not by row
    out = smooth_along_slices(impulse_series(positions, 3), np.array(positions))
    got = {z: float(out[j, 5, 7]) for j, z in enumerate(positions)}
    assert got == pytest.approx({0: 0.0, 1: 0.0, 2: 0.25, 3: 0.5, 4: 0.25, 5: 0.0, 6: 0.0})
    assert np.count_nonzero(out) == 3, "nothing spreads within a slice"


def test_end_slices_renormalise_over_the_neighbour_they_have():
    positions = [2, 0, 1]
    out = smooth_along_slices(impulse_series(positions, 0), np.array(positions))
    got = {z: float(out[j, 5, 7]) for j, z in enumerate(positions)}
    # slice 0 has no z-1: (2 * 1 + 1 * 0) / 3; slice 1 has both neighbours: 1/4; slice 2 is two positions away
    assert got == pytest.approx({0: 2 / 3, 1: 0.25, 2: 0.0})
    constant = np.full((3, H, W), 0.7, np.float32)
    np.testing.assert_allclose(smooth_along_slices(constant, np.array(positions)), constant, rtol=1e-6)


def test_a_gap_in_the_positions_is_no_neighbour():
    positions = [0, 1, 3]
    out = smooth_along_slices(impulse_series(positions, 3), np.array(positions))
    assert float(out[1, 5, 7]) == 0.0 and float(out[2, 5, 7]) == pytest.approx(1.0)  # 3 alone: 0.5 / 0.5


def test_smoothed_support_drops_a_component_salient_on_one_slice_only():
    a = np.zeros((H, W), bool)
    a[2:6, 2:6] = True
    b = np.zeros((H, W), bool)
    b[10:14, 10:14] = True
    masks = np.stack([a, a | b, a])  # the per-slice ROIs (B found on the middle slice only)
    maps = np.stack([0.5 * a, 0.5 * (a | b), 0.5 * a]).astype(np.float32)
    order = np.array([1, 0, 2])  # rows shuffled
    out = smoothed_support(masks[order], maps[order], order, threshold=0.3, top_k=2)[np.argsort(order)]
    # smoothed middle slice: A = 0.5 (> 0.3) stays; B = 0.5 / 2 = 0.25 (< 0.3) goes
    np.testing.assert_array_equal(out, np.stack([a, a, a]))
    # with B salient on the neighbours too, it stays: the drop is the smoothing's doing
    both = np.stack([0.5 * (a | b)] * 3).astype(np.float32)
    keep_b = smoothed_support(masks, both, np.arange(3), 0.3, 2)
    np.testing.assert_array_equal(keep_b[1], a | b)


def test_option_off_by_default_and_in_provenance_only_when_set():
    assert LocalizeConfig.load(None, ["refine.use_sam=false", "volume.mode=series"]).volume.z_smooth is False
    assert "z_smooth" not in VolumeConfig(mode="series").provenance()  # series caches written before stay resumable
    on = LocalizeConfig.load(None, ["refine.use_sam=false", "volume={mode: series, z_smooth: true}"]).volume
    assert on.z_smooth and on.provenance()["z_smooth"] is True
