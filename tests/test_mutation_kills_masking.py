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


@pytest.mark.parametrize("device", ["meta", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_masks_and_statistics_stay_on_the_requested_device(device):
    """The device is honoured everywhere. A CPU-only suite cannot tell `device=None` from the CPU; the meta device
    tells for the outputs (a tensor left on the CPU shows), but accepts a CPU index in its scatter: the random
    order and the keep flags made on the CPU fail only on CUDA."""
    mask = sample_random_mask(2, (3, 4), 0.5, device=device)
    assert mask.device.type == device and mask.shape == (2, 1, 3, 4)
    roi = torch.zeros(2, 1, 96, 128, device=device)
    for masking in (RandomMasking(0.5), DifferentiatedMasking()):
        active, stats = masking(roi, (3, 4))
        assert active.device.type == device
        assert {name: value.device.type for name, value in stats.items()} == dict.fromkeys(stats, device)


def test_the_generator_alone_decides_the_mask():
    """Same generator seed, same mask, whatever the global RNG did in between (an 8 x 8 grid keeping 25 or 38
    cells: two independent draws agree with probability 1 / C(64, 25) or less)."""
    roi = torch.zeros(2, 1, 256, 256)
    roi[:, :, :128, :96] = 1
    for masking in (RandomMasking(0.6), DifferentiatedMasking(0.8, 0.4)):
        first = masking(roi, (8, 8), generator=torch.Generator().manual_seed(3))[0]
        torch.rand(5)  # moves the global RNG on: a mask drawn from it would differ
        second = masking(roi, (8, 8), generator=torch.Generator().manual_seed(3))[0]
        assert torch.equal(first, second)
    one = sample_random_mask(1, (8, 8), 0.6, generator=torch.Generator().manual_seed(3))
    assert torch.equal(one, sample_random_mask(1, (8, 8), 0.6, generator=torch.Generator().manual_seed(3)))


def test_random_masking_defaults_to_sparks_ratio():
    """SparK's default mask ratio 0.6: 7 x 7 = 49 cells keep round(49 * 0.4) = 20."""
    masking = RandomMasking()
    assert masking.ratio == 0.6 and masking.min_visible == 1
    active, stats = masking(torch.zeros(3, 1, 224, 224), (7, 7))
    assert active.flatten(1).sum(1).tolist() == [20, 20, 20]
    assert stats["mask/expected_ratio"].item() == pytest.approx(0.6)


def test_fraction_rule_tolerates_a_share_a_millionth_short():
    """Rule "fraction" counts a cell whose share is within 1e-6 below `min_fraction` (the tolerance that absorbs
    the float error of the pooled share): a half-ROI cell is ROI at min_fraction 0.5 + 1e-6, not at 0.5 + 2e-6."""
    roi = torch.zeros(1, 1, 2, 6)
    roi[0, 0, 0, :] = 1  # each of the three 2 x 2 cells: 2 of 4 pixels
    assert roi_cells(roi, (1, 3), "fraction", 0.5 + 1e-6).all()
    assert not roi_cells(roi, (1, 3), "fraction", 0.5 + 2e-6).any()


def test_differentiated_masking_names_the_bad_ratio():
    with pytest.raises(ValueError, match=r"^r_roi must be in \[0, 1\], got 1.2$"):
        DifferentiatedMasking(1.2, 0.4)
    with pytest.raises(ValueError, match=r"^r_roi must be in \[0, 1\], got -0.1$"):
        sample_differentiated_mask(torch.zeros(1, 1, 2, 2, dtype=torch.bool), -0.1, 0.4)


def test_the_top_up_counts_the_background_cells_already_kept():
    """1 ROI + 3 background cells, r_roi 1, r_bg 0.5: keeps int(3 * 0.5) = 1 background cell; a minimum of 4
    needs the 2 background cells left and then the ROI cell (a top-up that forgot the kept cell would ask 3 more
    background cells and leave the ROI cell masked)."""
    roi = torch.zeros(1, 1, 2, 2, dtype=torch.bool)
    roi[0, 0, 1, 0] = True
    assert sample_differentiated_mask(roi, 1.0, 0.5, min_visible=0).sum() == 1
    assert sample_differentiated_mask(roi, 1.0, 0.5, min_visible=4).all()


def test_exact_counts_apply_to_the_background_too():
    """5 background cells at r_bg 0.8: int(5 * 0.19999999999999996) = 0 in floats, the exact floor 1."""
    roi = torch.zeros(1, 1, 2, 4, dtype=torch.bool)
    roi[0, 0, 0, :3] = True  # 3 ROI cells (all masked at r_roi 1), 5 background cells
    assert sample_differentiated_mask(roi, 1.0, 0.8, min_visible=0).sum() == 0
    exact = sample_differentiated_mask(roi, 1.0, 0.8, min_visible=0, exact_counts=True)
    assert exact.sum() == 1 and not (exact & roi).any()
