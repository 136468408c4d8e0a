"""Mask samplers: exact per-region counts, edge cases, statistics, ROI-cell rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pretrain.masking import (
    DifferentiatedMasking,
    RandomMasking,
    roi_cells,
    sample_differentiated_mask,
    sample_random_mask,
)

PERCENT = st.integers(min_value=0, max_value=100)


def keep_count(n: int, percent: int) -> int:
    """The MWM fork's count: int(n * (1 - r)) in Python floats (float error included)."""
    return int(n * (1 - percent / 100))


def exact_keep_count(n: int, percent: int) -> int:
    """floor(n * (1 - percent/100)) in exact integer arithmetic."""
    return n * (100 - percent) // 100


@st.composite
def roi_grids(draw):
    """(B,1,h,w) bool ROI cell maps; each image empty, full or random."""
    batch = draw(st.integers(1, 6))
    h, w = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    images = []
    for _ in range(batch):
        kind = draw(st.sampled_from(["empty", "full", "random"]))
        if kind == "empty":
            images.append(np.zeros((h, w), bool))
        elif kind == "full":
            images.append(np.ones((h, w), bool))
        else:
            bits = draw(st.lists(st.booleans(), min_size=h * w, max_size=h * w))
            images.append(np.array(bits, bool).reshape(h, w))
    return torch.from_numpy(np.stack(images)[:, None])


@settings(max_examples=150, deadline=None)
@given(
    roi=roi_grids(),
    p_roi=PERCENT,
    p_bg=PERCENT,
    min_visible=st.integers(0, 1),
    exact=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_differentiated_mask_keeps_exact_counts_per_region(roi, p_roi, p_bg, min_visible, exact, seed):
    gen = torch.Generator().manual_seed(seed)
    active = sample_differentiated_mask(
        roi, p_roi / 100, p_bg / 100, generator=gen, min_visible=min_visible, exact_counts=exact
    )
    assert active.shape == roi.shape and active.dtype == torch.bool
    count = exact_keep_count if exact else keep_count
    for a, r in zip(active[:, 0].numpy(), roi[:, 0].numpy(), strict=True):
        n_roi, n_bg = int(r.sum()), int((~r).sum())
        keep_roi, keep_bg = count(n_roi, p_roi), count(n_bg, p_bg)
        if keep_roi + keep_bg < min_visible:  # top-up: background first, then ROI
            if n_bg > keep_bg:
                keep_bg += 1
            else:
                keep_roi += 1
        assert int((a & r).sum()) == keep_roi
        assert int((a & ~r).sum()) == keep_bg
        if min_visible:
            assert a.any(), "every image keeps at least one visible cell"


@settings(max_examples=60, deadline=None)
@given(roi=roi_grids(), p_roi=PERCENT, p_bg=PERCENT)
def test_differentiated_stats(roi, p_roi, p_bg):
    batch, _, h, w = roi.shape
    scale = 32  # the ROI map at input resolution: each cell is 32x32 pixels, ROI cells fully covered
    roi_pixels = roi.repeat_interleave(scale, 2).repeat_interleave(scale, 3).to(torch.uint8)
    active, stats = DifferentiatedMasking(p_roi / 100, p_bg / 100)(roi_pixels, (h, w))
    n = h * w
    n_roi = roi.flatten(1).sum(1).double()
    expected = ((p_roi / 100 * n_roi + p_bg / 100 * (n - n_roi)) / n).mean()
    assert stats["mask/expected_ratio"].item() == pytest.approx(expected.item(), abs=1e-6)
    assert stats["mask/realised_ratio"].item() == pytest.approx(1 - active.float().mean().item(), abs=1e-6)
    assert stats["mask/empty_roi_share"].item() == pytest.approx((n_roi == 0).double().mean().item())
    assert all(v.dim() == 0 for v in stats.values())
    # flooring the kept cells can only mask more than the nominal share (top-up aside)
    if (active.flatten(1).sum(1) > 1).all():
        assert stats["mask/realised_ratio"].item() >= stats["mask/expected_ratio"].item() - 1e-6


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 5),
    h=st.integers(1, 8),
    w=st.integers(1, 8),
    percent=st.integers(0, 99),
    seed=st.integers(0, 2**31),
)
def test_random_mask_exact_count(batch, h, w, percent, seed):
    active = sample_random_mask(batch, (h, w), percent / 100, generator=torch.Generator().manual_seed(seed))
    assert active.shape == (batch, 1, h, w)
    expected = max(round(h * w * (1 - percent / 100)), 1)  # SparK's len_keep
    assert active.flatten(1).sum(1).tolist() == [expected] * batch


def test_counts_follow_the_reference_code_float_error_included():
    # MWM: int(n * (1 - r)); 1 - 0.8 == 0.19999999999999996, so 5 ROI cells keep 0 and 10 keep 1 (not 1 and 2)
    roi = torch.zeros(2, 1, 7, 7, dtype=torch.bool)
    roi[0].view(-1)[:5] = True
    roi[1].view(-1)[:10] = True
    kept = sample_differentiated_mask(roi, 0.8, 0.4, min_visible=0)
    assert (kept & roi).flatten(1).sum(1).tolist() == [0, 1]
    assert (kept & ~roi).flatten(1).sum(1).tolist() == [26, 23]  # int(44 * 0.6) = 26, int(39 * 0.6) = 23
    exact = sample_differentiated_mask(roi, 0.8, 0.4, min_visible=0, exact_counts=True)
    assert (exact & roi).flatten(1).sum(1).tolist() == [1, 2]
    # SparK: round(49 * (1 - r)): 19.6 -> 20 at r = 0.6, 14.7 -> 15 at r = 0.7, 9.8 -> 10 at r = 0.8
    for ratio, keep in ((0.6, 20), (0.7, 15), (0.8, 10)):
        assert sample_random_mask(3, (7, 7), ratio).flatten(1).sum(1).tolist() == [keep] * 3
    assert sample_random_mask(2, (1, 10), 0.7, min_visible=0).flatten(1).sum(1).tolist() == [3, 3]


def test_edge_cases_empty_full_and_no_visible_cell():
    roi = torch.zeros(3, 1, 2, 2, dtype=torch.bool)
    roi[1] = True  # all cells ROI
    roi[2, 0, 0, 0] = True  # one ROI cell
    # empty ROI: background-only masking at r_bg; full ROI: masking at r_roi; floor gives 0 -> 1 kept
    active = sample_differentiated_mask(roi, r_roi=0.8, r_bg=0.5, generator=torch.Generator().manual_seed(0))
    kept = active.flatten(1).sum(1).tolist()
    assert kept[0] == 2  # 4 background cells at 0.5
    assert kept[1] == 1  # floor(4 * 0.2) = 0, topped up to one ROI cell
    assert kept[2] == 1 and not active[2, 0, 0, 0]  # floor(1*0.2)=0 ROI + floor(3*0.5)=1 background
    without_top_up = sample_differentiated_mask(roi, 0.8, 0.5, min_visible=0)
    assert without_top_up[1].sum() == 0


def test_masks_differ_between_images_and_follow_the_generator():
    roi = torch.zeros(64, 1, 4, 4, dtype=torch.bool)
    a1 = sample_differentiated_mask(roi, 0.8, 0.5, generator=torch.Generator().manual_seed(1))
    a2 = sample_differentiated_mask(roi, 0.8, 0.5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a1, a2)
    assert len({tuple(x.flatten().tolist()) for x in a1}) > 30  # independent per image, not one shared mask


def test_masking_is_uniform_over_cells():
    roi = torch.zeros(4000, 1, 2, 3, dtype=torch.bool)
    roi[:, 0, 0, :] = True  # 3 ROI cells, 3 background cells
    active = sample_differentiated_mask(roi, 2 / 3, 1 / 3, generator=torch.Generator().manual_seed(0))
    freq = active.float().mean(0)[0]
    assert torch.allclose(freq[0], torch.full((3,), 1 / 3), atol=0.04)  # 1 of 3 ROI cells kept
    assert torch.allclose(freq[1], torch.full((3,), 2 / 3), atol=0.04)  # 2 of 3 background cells kept


def test_roi_cells_rules():
    roi = torch.zeros(1, 1, 64, 64, dtype=torch.uint8)
    roi[0, 0, 0, 0] = 1  # a single pixel in cell (0, 0)
    roi[0, 0, 32:, 32:48] = 1  # half of cell (1, 1)
    assert roi_cells(roi, (2, 2), "any")[0, 0].tolist() == [[True, False], [False, True]]
    assert roi_cells(roi, (2, 2))[0, 0].tolist() == [[True, False], [False, True]]  # both hold their top-left
    # nearest (the default, as the MWM fork) reads one pixel per cell, its top-left one
    top_left = torch.zeros(1, 1, 64, 64, dtype=torch.uint8)
    top_left[0, 0, 31, 31] = 1  # the bottom-right pixel of cell (0, 0)
    top_left[0, 0, 32:, :32] = 1  # all of cell (1, 0) ...
    top_left[0, 0, 32, 0] = 0  # ... but its top-left pixel
    top_left[0, 0, 32, 32] = 255  # only the top-left pixel of cell (1, 1), any non-zero value
    assert roi_cells(top_left, (2, 2))[0, 0].tolist() == [[False, False], [False, True]]
    assert roi_cells(top_left, (2, 2), "nearest")[0, 0].tolist() == [[False, False], [False, True]]
    assert roi_cells(top_left, (2, 2), "any")[0, 0].tolist() == [[True, False], [True, True]]
    assert roi_cells(roi, (2, 2), "fraction", 0.5)[0, 0].tolist() == [[False, False], [False, True]]
    assert roi_cells(roi, (2, 2), "fraction", 0.6)[0, 0].tolist() == [[False, False], [False, False]]
    with pytest.raises(ValueError, match="min_fraction"):
        roi_cells(roi, (2, 2), "any", 0.5)
    with pytest.raises(ValueError, match="unknown ROI cell rule"):
        roi_cells(roi, (2, 2), "most")


def test_masking_classes_on_pixel_rois():
    roi = torch.zeros(4, 1, 128, 128, dtype=torch.uint8)
    roi[0, 0, :64, :64] = 1  # 4 of 16 cells
    roi[2] = 1
    active, stats = DifferentiatedMasking(0.75, 0.25)(roi, (4, 4))
    assert active.flatten(1).sum(1).tolist() == [1 + 9, 12, 4, 12]
    assert stats["mask/empty_roi_share"].item() == 0.5
    active, stats = RandomMasking(0.6)(roi, (4, 4))
    assert active.flatten(1).sum(1).tolist() == [6] * 4
    assert stats["mask/expected_ratio"].item() == pytest.approx(0.6)
    assert stats["mask/realised_ratio"].item() == pytest.approx(10 / 16)
    assert stats["mask/empty_roi_share"].item() == 0.5


def test_bad_arguments():
    with pytest.raises(ValueError, match="r_roi"):
        DifferentiatedMasking(r_roi=1.5)
    with pytest.raises(ValueError, match="bool"):
        sample_differentiated_mask(torch.zeros(1, 1, 2, 2), 0.5, 0.5)
    with pytest.raises(ValueError, match="rule"):
        DifferentiatedMasking(rule="fraction")  # needs min_fraction > 0
