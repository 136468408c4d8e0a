"""Masking cases that `make mutate MODULE=pretrain/masking.py` found untested: the statistics' exact values, the
top-up order, argument bounds (both ends allowed or refused as documented) and the messages.

Expected counts are worked out by hand from the module docstring's rules (MWM: int(n * (1 - r)) in floats)."""

from __future__ import annotations

import pytest
import torch

from pretrain.masking import (
    DifferentiatedMasking,
    RandomMasking,
    roi_cells,
    sample_differentiated_mask,
    sample_random_mask,
)


def four_images() -> torch.Tensor:
    """ROI maps (4,1,128,128) on a 4x4 grid of 32 px cells: 4 ROI cells, none, all 16, none."""
    roi = torch.zeros(4, 1, 128, 128, dtype=torch.uint8)
    roi[0, 0, :64, :64] = 1
    roi[2] = 1
    return roi


def test_differentiated_statistics_are_the_expected_and_realised_ratios():
    active, stats = DifferentiatedMasking(0.8, 0.4)(four_images(), (4, 4), generator=torch.Generator().manual_seed(0))
    # kept: int(4*0.2)=0 ROI + int(12*0.6)=7; int(16*0.6)=9; int(16*0.2)=3; 9
    assert active.flatten(1).sum(1).tolist() == [7, 9, 3, 9]
    assert stats["mask/realised_ratio"].item() == pytest.approx(1 - 28 / 64)
    # per image r_roi * share + r_bg * (1 - share): 0.5, 0.4, 0.8, 0.4
    assert stats["mask/expected_ratio"].item() == pytest.approx(2.1 / 4)
    assert stats["mask/empty_roi_share"].item() == 0.5
    assert set(stats) == {"mask/expected_ratio", "mask/realised_ratio", "mask/empty_roi_share"}


def test_random_masking_passes_its_visible_minimum_and_states_its_ratio():
    active, stats = RandomMasking(1.0, min_visible=3)(four_images(), (4, 4))
    assert active.flatten(1).sum(1).tolist() == [3] * 4
    assert stats["mask/expected_ratio"].item() == 1.0 and stats["mask/realised_ratio"].item() == 1 - 3 / 16
    assert RandomMasking(0.6).min_visible == 1 and sample_random_mask(2, (2, 2), 1.0).flatten(1).sum(1).tolist() == [
        1,
        1,
    ]
    assert repr(RandomMasking(0.7)) == "RandomMasking(ratio=0.7)"
    assert repr(DifferentiatedMasking(0.8, 0.4)) == (
        "DifferentiatedMasking(r_roi=0.8, r_bg=0.4, rule='nearest', min_fraction=0.0, exact_counts=False)"
    )


def test_differentiated_masking_passes_its_options():
    roi = torch.zeros(1, 1, 64, 64, dtype=torch.uint8)
    roi[0, 0, 48:, 48:] = 1  # a quarter of cell (1, 1), not its top-left pixel
    cells = DifferentiatedMasking(1.0, 0.0, rule="any", min_visible=0)(roi, (2, 2))[0]
    assert cells[0, 0].tolist() == [[True, True], [True, False]]  # only the ROI cell (rule any) is masked
    cells = DifferentiatedMasking(1.0, 0.0, rule="fraction", min_fraction=0.25, min_visible=0)(roi, (2, 2))[0]
    assert cells[0, 0].tolist() == [[True, True], [True, False]]
    cells = DifferentiatedMasking(1.0, 0.0, rule="fraction", min_fraction=0.3, min_visible=0)(roi, (2, 2))[0]
    assert cells.all()
    assert DifferentiatedMasking(1.0, 1.0, min_visible=2)(roi, (2, 2))[0].sum() == 2
    five = torch.zeros(1, 1, 1, 10, dtype=torch.uint8)
    five[..., :5] = 1  # 5 ROI cells at 0.8: int(5 * 0.19999999999999996) = 0, the exact floor 1
    assert DifferentiatedMasking(0.8, 1.0, min_visible=0)(five, (1, 10))[0].sum() == 0
    assert DifferentiatedMasking(0.8, 1.0, min_visible=0, exact_counts=True)(five, (1, 10))[0].sum() == 1


def test_the_top_up_takes_background_cells_first_then_roi_cells():
    roi = torch.zeros(1, 1, 2, 2, dtype=torch.bool)
    roi[0, 0, 0, 0] = True  # 1 ROI cell, 3 background cells, everything masked before the top-up
    two = sample_differentiated_mask(roi, 1.0, 1.0, min_visible=2)
    assert two.sum() == 2 and not two[0, 0, 0, 0]
    four = sample_differentiated_mask(roi, 1.0, 1.0, min_visible=4)
    assert four.all()
    three = sample_differentiated_mask(roi, 1.0, 1.0, min_visible=3)
    assert three.sum() == 3 and not three[0, 0, 0, 0]


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_ratio_bounds_are_allowed(ratio):
    roi = torch.zeros(1, 1, 2, 2, dtype=torch.bool)
    assert sample_random_mask(1, (2, 2), ratio, min_visible=0).sum() == round(4 * (1 - ratio))
    assert sample_differentiated_mask(roi, ratio, ratio, min_visible=0).sum() == round(4 * (1 - ratio))
    RandomMasking(ratio), DifferentiatedMasking(ratio, ratio)


def test_bad_arguments_name_the_argument_and_the_value():
    roi = torch.zeros(1, 1, 2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"^ratio must be in \[0, 1\], got 1.01$"):
        sample_random_mask(1, (2, 2), 1.01)
    with pytest.raises(ValueError, match=r"^ratio must be in \[0, 1\], got -0.01$"):
        RandomMasking(-0.01)
    with pytest.raises(ValueError, match=r"^r_bg must be in \[0, 1\], got 1.5$"):
        sample_differentiated_mask(roi, 0.5, 1.5)
    with pytest.raises(ValueError, match=r"^r_bg must be in \[0, 1\], got 2$"):
        DifferentiatedMasking(0.5, 2)
    for n in (-1, 5):
        with pytest.raises(ValueError, match=rf"^min_visible must be in \[0, 4\], got {n}$"):
            sample_random_mask(1, (2, 2), 0.5, min_visible=n)
        with pytest.raises(ValueError, match=rf"^min_visible must be in \[0, 4\], got {n}$"):
            sample_differentiated_mask(roi, 0.5, 0.5, min_visible=n)
    assert sample_random_mask(1, (2, 2), 1.0, min_visible=4).all()
    assert sample_differentiated_mask(roi, 1.0, 1.0, min_visible=4).all()
    with pytest.raises(ValueError, match=r"^ROI cells must be a bool tensor \(B,1,h,w\), got torch.bool \(1, 2, 2\)$"):
        sample_differentiated_mask(roi[0], 0.5, 0.5)
    with pytest.raises(ValueError, match=r"got torch.bool \(1, 2, 2, 2\)"):
        sample_differentiated_mask(torch.zeros(1, 2, 2, 2, dtype=torch.bool), 0.5, 0.5)
    with pytest.raises(ValueError, match=r"^ROI map must be \(B,1,H,W\), got \(1, 2, 8, 8\)$"):
        roi_cells(torch.zeros(1, 2, 8, 8), (2, 2))
    with pytest.raises(ValueError, match=r"^ROI map must be \(B,1,H,W\), got \(1, 8, 8\)$"):
        roi_cells(torch.zeros(1, 8, 8), (2, 2))
    with pytest.raises(ValueError, match=r"^rule='fraction' needs min_fraction in \(0, 1\], got 0.0$"):
        roi_cells(torch.zeros(1, 1, 8, 8), (2, 2), "fraction")
    with pytest.raises(ValueError, match=r"got 1.5$"):
        roi_cells(torch.zeros(1, 1, 8, 8), (2, 2), "fraction", 1.5)
    with pytest.raises(ValueError, match=r"^min_fraction applies to rule='fraction' only$"):
        roi_cells(torch.zeros(1, 1, 8, 8), (2, 2), "nearest", 0.5)


def test_roi_cells_count_only_positive_pixels_and_a_full_cell_at_fraction_one():
    roi = torch.full((1, 1, 8, 8), -1.0)
    roi[0, 0, :4, :4] = 0.5
    assert roi_cells(roi, (2, 2), "any")[0, 0].tolist() == [[True, False], [False, False]]
    assert roi_cells(roi, (2, 2))[0, 0].tolist() == [[True, False], [False, False]]
    assert roi_cells(roi, (2, 2), "fraction", 1.0)[0, 0].tolist() == [[True, False], [False, False]]
    roi[0, 0, 0, 0] = 0.0  # 15 of 16 pixels
    assert not roi_cells(roi, (2, 2), "fraction", 1.0).any()
    assert roi_cells(roi, (2, 2), "fraction", 15 / 16)[0, 0, 0, 0]
