"""Random masking at the ratio a differentiated arm realises: the arm kind and the calibration that sets its ratio.

A differentiated arm's overall masking ratio is not its nominal one: it keeps int(n_roi(1-r_roi)) ROI cells and
int(n_bg(1-r_bg)) background cells per image, so its ratio depends on how many grid cells each ROI covers. The
fair random-masking control masks the same share of cells. Before training, `calibrate` reads the ROI source's
cache, puts every ROI on the encoder grid exactly as pretraining does (the datamodule's resize, ROI shape and
flip; the module's cell rule and counting rule, `pretrain.masking`), and averages the realised ratio over the
items: the differentiated arm's expected realised ratio. SparK's random masking keeps round(N(1-r)) of N cells,
so it can realise only multiples of 1/N; `matched_mask_ratio` picks the one nearest to the target.

Config entry: `{strategy: matched_random, match: [ARM, ...]}` (study.arms.matched_random_arms), one random arm
`random-matched-ARM` per differentiated arm named; the runner sets its ratio with `calibrate` before it trains
(recorded in `runs/<arm>/calibration/done.json`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from data.dataset import RoiDataset
from data.roi_cache import RoiCache
from pretrain.datamodule import RoiDataModule
from pretrain.masking import roi_cells, sample_differentiated_mask
from pretrain.module import MaskedPretraining
from pretrain.sparse_encoder import build_timm_trunk
from pretrain.transforms import square_resize
from study.arms import Arm


def matched_mask_ratio(realised_ratio: float, n_cells: int) -> float:
    """The random-masking ratio whose realised ratio is the multiple of 1/n_cells nearest to `realised_ratio`:
    1 - k/N with k = round(N(1 - realised)) cells kept (so SparK's round(N(1 - r)) keeps exactly k)."""
    if not 0.0 <= realised_ratio <= 1.0:
        raise ValueError(f"realised ratio must be in [0, 1], got {realised_ratio}")
    keep = round(n_cells * (1.0 - realised_ratio))
    return 1.0 - keep / n_cells


def realised_ratio(cells_b1hw: torch.Tensor, r_roi: float, r_bg: float, *, exact_counts: bool = False) -> float:
    """Mean over images of the share of cells MWM's sampler masks, given each image's ROI cells (B,1,h,w).

    The counts per image do not depend on the random draw (only which cells do), so one draw gives the
    expectation exactly; the sampler itself is used so that its counting rule (and its top-up) is the one
    pretraining applies."""
    active = sample_differentiated_mask(cells_b1hw, r_roi, r_bg, exact_counts=exact_counts)
    return float(1.0 - active.double().mean())


@dataclass(frozen=True)
class GridSetting:
    """How pretraining puts an ROI on the grid: input side, grid, ROI shape, flip probability, cell rule, counts."""

    input_size: int
    grid_hw: tuple[int, int]
    roi_shape: str
    hflip: float
    roi_rule: str
    roi_min_fraction: float
    exact_counts: bool

    @classmethod
    def from_pretrain_config(cls, config_path: str | Path, overrides: dict[str, Any]) -> GridSetting:
        """The settings of `pretrain fit --config config_path` with `overrides` ({'model.input_size': 96, ...});
        a key set in neither takes the default of MaskedPretraining / RoiDataModule."""
        raw = yaml.safe_load(Path(config_path).read_text()) or {}

        def setting(section: str, key: str, owner: type) -> Any:
            dotted = f"{section}.{key}"
            if dotted in overrides:
                return overrides[dotted]
            if key in (raw.get(section) or {}):
                return raw[section][key]
            return inspect.signature(owner.__init__).parameters[key].default

        model = {k: setting("model", k, MaskedPretraining) for k in ("backbone", "input_size", "roi_rule")}
        model |= {k: setting("model", k, MaskedPretraining) for k in ("roi_min_fraction", "exact_counts")}
        augment = setting("data", "augment", RoiDataModule)
        if augment != "resize":
            raise ValueError(f"the calibration follows the 'resize' augmentation; the pretraining uses {augment!r}")
        with torch.device("meta"):
            trunk, indices = build_timm_trunk(model["backbone"])
        stride = trunk.feature_info[indices[-1]]["reduction"]
        size = int(model["input_size"])
        return cls(
            input_size=size,
            grid_hw=(size // stride, size // stride),
            roi_shape=setting("data", "roi_shape", RoiDataModule),
            hflip=float(setting("data", "hflip", RoiDataModule)),
            roi_rule=model["roi_rule"],
            roi_min_fraction=float(model["roi_min_fraction"]),
            exact_counts=bool(model["exact_counts"]),
        )


def cache_roi_cells(corpus: Path, cache: Path, grid: GridSetting) -> tuple[torch.Tensor, torch.Tensor]:
    """The ROI cells (N,1,h,w) of every done item of `cache` as pretraining sees them, unflipped and flipped."""
    dataset = RoiDataset(
        corpus, None, RoiCache.open(cache, mode="r"), transform=square_resize(grid.input_size), roi_shape=grid.roi_shape
    )
    roi_b1HW = torch.stack([dataset[i]["roi"] for i in range(len(dataset))]).float()
    if roi_b1HW.numel() == 0:
        raise ValueError(f"{cache}: no done item to calibrate on")

    def cells(roi: torch.Tensor) -> torch.Tensor:
        return roi_cells(roi, grid.grid_hw, grid.roi_rule, grid.roi_min_fraction)

    return cells(roi_b1HW), cells(roi_b1HW.flip(-1))


def calibrate(corpus: Path, cache: Path, target: Arm, grid: GridSetting) -> dict[str, Any]:
    """The expected realised ratio of differentiated arm `target` on `cache`, and the matched random ratio."""
    if target.r_roi is None or target.r_bg is None:
        raise ValueError(f"arm {target.name} is not a differentiated arm: nothing to match")
    plain, flipped = cache_roi_cells(corpus, cache, grid)
    ratios = [realised_ratio(c, target.r_roi, target.r_bg, exact_counts=grid.exact_counts) for c in (plain, flipped)]
    expected = (1 - grid.hflip) * ratios[0] + grid.hflip * ratios[1]
    n_cells = grid.grid_hw[0] * grid.grid_hw[1]
    return {
        "target": target.name,
        "target_realised_ratio": expected,
        "mask_ratio": matched_mask_ratio(expected, n_cells),
        "grid": list(grid.grid_hw),
        "input_size": grid.input_size,
        "items": int(plain.shape[0]),
        "roi_cell_share": float(plain.float().mean()),
    }
