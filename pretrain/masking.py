"""Mask samplers on the encoder grid: SparK's uniform random masking and MWM's differentiated masking.

Masks are bool (B,1,h,w) on the encoder's final grid (stride 32), True = visible ("active"), as SparK.
Everything is vectorised over the batch on the input's device: one random permutation per image from an
argsort of uniform scores, then the first k cells of each region in permuted order are kept.

Counting rules, as the reference code computes them (Python floats):
- MWM (`sample_differentiated_mask`): a region of n cells masked at ratio r keeps `int(n * (1 - r))` cells
  (the MWM fork's `SparK.targeted_mask`). Float error is not corrected there: 1 - 0.8 is 0.19999999999999996,
  so 5, 10, ..., 45 ROI cells at r = 0.8 keep one cell fewer than n/5. `exact_counts=True` floors the exact
  decimal product instead (5 cells keep 1).
- SparK (`sample_random_mask`): N cells keep `round(N * (1 - r))` (SparK's `len_keep`; Python's round, half
  to even), e.g. 20 of 49 at r = 0.6.
`min_visible` (default 1) then tops up an image that would keep fewer cells, background cells first, then
ROI cells: an image with no visible cell gives the encoder nothing and, if the whole batch is in that state,
empty batch statistics (the references have no such guard; at 7x7 with ratios below 0.98 it never fires).
An image with an empty ROI is all background, masked at `r_bg`; an image whose every cell is ROI is masked
at `r_roi`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

RoiRule = Literal["nearest", "any", "fraction"]
_FLOOR_TOL = 1e-9  # exact_counts: absorbs the float error of n * (1 - r) for decimal ratios


def _check_ratio(name: str, ratio: float) -> None:
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {ratio}")


def _keep_table(n_cells: int, ratio: float, device: torch.device, exact: bool = False) -> torch.Tensor:
    """keep[n] = int(n * (1 - ratio)) for n = 0..n_cells (MWM, in floats), or the exact decimal floor."""
    keep = [math.floor(n * (1.0 - ratio) + _FLOOR_TOL) if exact else int(n * (1.0 - ratio)) for n in range(n_cells + 1)]
    return torch.tensor(keep, dtype=torch.long, device=device)


def _random_permutation(
    batch: int, n_cells: int, device: torch.device, generator: torch.Generator | None
) -> torch.Tensor:
    """(B, L) long: an independent random permutation of 0..L-1 per row."""
    return torch.rand(batch, n_cells, device=device, generator=generator).argsort(dim=1)


def _keep_counts_per_region(
    is_roi_bl: torch.Tensor, keep_roi_b: torch.Tensor, keep_bg_b: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """Keep `keep_roi_b[i]` random ROI cells and `keep_bg_b[i]` random background cells of row i -> (B, L)."""
    batch, n_cells = is_roi_bl.shape
    order_bl = _random_permutation(batch, n_cells, is_roi_bl.device, generator)
    roi_in_order = is_roi_bl.gather(1, order_bl)
    # rank of each cell among the cells of its own region, in permuted order
    rank_roi = roi_in_order.long().cumsum(1) - 1
    rank_bg = (~roi_in_order).long().cumsum(1) - 1
    keep_in_order = torch.where(roi_in_order, rank_roi < keep_roi_b[:, None], rank_bg < keep_bg_b[:, None])
    return torch.zeros_like(is_roi_bl).scatter(1, order_bl, keep_in_order)


def _top_up(
    keep_roi: torch.Tensor, keep_bg: torch.Tensor, n_roi: torch.Tensor, n_bg: torch.Tensor, min_visible: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raise per-image keep counts to `min_visible` in total, background cells first."""
    need = (min_visible - keep_roi - keep_bg).clamp_min(0)
    extra_bg = torch.minimum(need, n_bg - keep_bg)
    extra_roi = torch.minimum(need - extra_bg, n_roi - keep_roi)
    return keep_roi + extra_roi, keep_bg + extra_bg


def sample_random_mask(
    batch: int,
    grid_hw: tuple[int, int],
    ratio: float,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    min_visible: int = 1,
) -> torch.Tensor:
    """SparK's uniform masking: each image keeps exactly max(round(h*w*(1-ratio)), min_visible) random cells.

    Returns bool (B,1,h,w), True = visible.
    """
    _check_ratio("ratio", ratio)
    h, w = grid_hw
    n_cells = h * w
    if not 0 <= min_visible <= n_cells:
        raise ValueError(f"min_visible must be in [0, {n_cells}], got {min_visible}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    keep = max(round(n_cells * (1.0 - ratio)), min_visible)
    order_bl = _random_permutation(batch, n_cells, device, generator)
    keep_in_order = (torch.arange(n_cells, device=device) < keep).expand(batch, n_cells)
    active_bl = torch.zeros(batch, n_cells, dtype=torch.bool, device=device).scatter(1, order_bl, keep_in_order)
    return active_bl.view(batch, 1, h, w)


def roi_cells(
    roi_b1HW: torch.Tensor, grid_hw: tuple[int, int], rule: RoiRule = "nearest", min_fraction: float = 0.0
) -> torch.Tensor:
    """Which grid cells count as ROI: bool (B,1,h,w) from an ROI map (B,1,H,W) at input resolution.

    rule "nearest" (MWM): the ROI map resized to the grid with `F.interpolate(mode="nearest")`, which reads one
    pixel per cell, at floor(i * H / h): the top-left pixel of each 32x32 cell. Rule "any": a cell with at least
    one ROI pixel; rule "fraction": a cell whose ROI pixel share is at least `min_fraction` (in (0, 1]). Sides
    need not be multiples of the grid, but usually are.
    """
    if roi_b1HW.dim() != 4 or roi_b1HW.shape[1] != 1:
        raise ValueError(f"ROI map must be (B,1,H,W), got {tuple(roi_b1HW.shape)}")
    if rule in ("nearest", "any"):
        if min_fraction != 0.0:
            raise ValueError("min_fraction applies to rule='fraction' only")
    elif rule == "fraction":
        if not 0.0 < min_fraction <= 1.0:
            raise ValueError(f"rule='fraction' needs min_fraction in (0, 1], got {min_fraction}")
    else:
        raise ValueError(f"unknown ROI cell rule {rule!r}; use 'nearest', 'any' or 'fraction'")
    roi_b1HW = (roi_b1HW > 0).float()
    if rule == "nearest":
        return F.interpolate(roi_b1HW, size=grid_hw, mode="nearest") > 0
    roi_share = F.adaptive_avg_pool2d(roi_b1HW, grid_hw)
    return roi_share > 0 if rule == "any" else roi_share >= min_fraction - 1e-6


def sample_differentiated_mask(
    roi_b1hw: torch.Tensor,
    r_roi: float,
    r_bg: float,
    *,
    generator: torch.Generator | None = None,
    min_visible: int = 1,
    exact_counts: bool = False,
) -> torch.Tensor:
    """MWM masking: per image keep int(N_roi*(1-r_roi)) random ROI cells and int(N_bg*(1-r_bg)) random
    background cells (then at least `min_visible` in total; `exact_counts`: see the module docstring).

    `roi_b1hw` is bool (B,1,h,w) on the encoder grid (see `roi_cells`). Returns bool (B,1,h,w), True = visible.
    """
    _check_ratio("r_roi", r_roi)
    _check_ratio("r_bg", r_bg)
    if roi_b1hw.dim() != 4 or roi_b1hw.shape[1] != 1 or roi_b1hw.dtype != torch.bool:
        raise ValueError(f"ROI cells must be a bool tensor (B,1,h,w), got {roi_b1hw.dtype} {tuple(roi_b1hw.shape)}")
    batch, _, h, w = roi_b1hw.shape
    n_cells = h * w
    if not 0 <= min_visible <= n_cells:
        raise ValueError(f"min_visible must be in [0, {n_cells}], got {min_visible}")
    is_roi_bl = roi_b1hw.reshape(batch, n_cells)
    n_roi = is_roi_bl.sum(1)
    n_bg = n_cells - n_roi
    keep_roi = _keep_table(n_cells, r_roi, roi_b1hw.device, exact_counts)[n_roi]
    keep_bg = _keep_table(n_cells, r_bg, roi_b1hw.device, exact_counts)[n_bg]
    keep_roi, keep_bg = _top_up(keep_roi, keep_bg, n_roi, n_bg, min_visible)
    return _keep_counts_per_region(is_roi_bl, keep_roi, keep_bg, generator).view(batch, 1, h, w)


def _realised_ratio(active_b1hw: torch.Tensor) -> torch.Tensor:
    return 1.0 - active_b1hw.float().mean()


def _empty_roi_share(cells_b1hw: torch.Tensor) -> torch.Tensor:
    return (~cells_b1hw.flatten(1).any(1)).float().mean()


class RandomMasking:
    """SparK baseline: uniform random masking at `ratio` (the ROI map is used for the statistics only)."""

    def __init__(self, ratio: float = 0.6, min_visible: int = 1) -> None:
        _check_ratio("ratio", ratio)
        self.ratio, self.min_visible = ratio, min_visible

    def __repr__(self) -> str:
        return f"RandomMasking(ratio={self.ratio})"

    def __call__(
        self, roi_b1HW: torch.Tensor, grid_hw: tuple[int, int], *, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """-> (active bool (B,1,h,w), stats). Stats are scalar tensors on the ROI map's device."""
        active = sample_random_mask(
            roi_b1HW.shape[0],
            grid_hw,
            self.ratio,
            device=roi_b1HW.device,
            generator=generator,
            min_visible=self.min_visible,
        )
        stats = {
            "mask/expected_ratio": torch.tensor(self.ratio, device=roi_b1HW.device),
            "mask/realised_ratio": _realised_ratio(active),
            "mask/empty_roi_share": _empty_roi_share(roi_b1HW > 0),
        }
        return active, stats


class DifferentiatedMasking:
    """MWM: mask ROI cells at `r_roi` and background cells at `r_bg` (authors' defaults 0.8 / 0.4).

    `rule` / `min_fraction` decide which cells count as ROI (see `roi_cells`); `exact_counts`: see the module
    docstring. Stats: 'mask/expected_ratio' = batch mean of (r_roi*N_roi + r_bg*N_bg) / N (before rounding),
    'mask/realised_ratio' = share of masked cells in the batch, 'mask/empty_roi_share' = share of images
    whose ROI covers no cell (those fall back to background-only masking at r_bg).
    """

    def __init__(
        self,
        r_roi: float = 0.8,
        r_bg: float = 0.4,
        rule: RoiRule = "nearest",
        min_fraction: float = 0.0,
        min_visible: int = 1,
        exact_counts: bool = False,
    ) -> None:
        _check_ratio("r_roi", r_roi)
        _check_ratio("r_bg", r_bg)
        roi_cells(torch.zeros(1, 1, 1, 1), (1, 1), rule, min_fraction)  # validates rule and min_fraction early
        self.r_roi, self.r_bg, self.rule, self.min_fraction = r_roi, r_bg, rule, min_fraction
        self.min_visible, self.exact_counts = min_visible, exact_counts

    def __repr__(self) -> str:
        return (
            f"DifferentiatedMasking(r_roi={self.r_roi}, r_bg={self.r_bg}, rule={self.rule!r}, "
            f"min_fraction={self.min_fraction}, exact_counts={self.exact_counts})"
        )

    def __call__(
        self, roi_b1HW: torch.Tensor, grid_hw: tuple[int, int], *, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """-> (active bool (B,1,h,w), stats). Stats are scalar tensors on the ROI map's device."""
        cells_b1hw = roi_cells(roi_b1HW, grid_hw, self.rule, self.min_fraction)
        active = sample_differentiated_mask(
            cells_b1hw,
            self.r_roi,
            self.r_bg,
            generator=generator,
            min_visible=self.min_visible,
            exact_counts=self.exact_counts,
        )
        roi_share_b = cells_b1hw.flatten(1).float().mean(1)
        stats = {
            "mask/expected_ratio": (self.r_roi * roi_share_b + self.r_bg * (1.0 - roi_share_b)).mean(),
            "mask/realised_ratio": _realised_ratio(active),
            "mask/empty_roi_share": _empty_roi_share(cells_b1hw),
        }
        return active, stats
