"""Random masking at the ratio a differentiated arm realises: the arm kind and the calibration that sets its ratio.

A differentiated arm's overall masking ratio is not its nominal one: it keeps int(n_roi(1-r_roi)) ROI cells and
int(n_bg(1-r_bg)) background cells per image, so its ratio depends on how many grid cells each ROI covers. The
fair random-masking control masks the same share of cells. Before training, `calibrate` reads the ROI source's
cache, puts every ROI on the encoder grid exactly as pretraining does (the datamodule's resize, ROI shape and
flip; the module's cell rule and counting rule, `pretrain.masking`), and averages the realised ratio over the
items: the differentiated arm's expected realised ratio. The items are the arm's own training items (`TrainingItems`:
its manifest, modality filter and done items, less its validation patients, `pretrain.datamodule.validation_rows`),
never the validation ones. SparK's random masking keeps round(N(1-r)) of N cells, so it can realise only multiples
of 1/N; `matched_mask_ratio` picks the one nearest to the target.

Config entry: `{strategy: matched_random, match: [ARM, ...]}` (study.arms.matched_random_arms), one random arm
`random-matched-ARM` per differentiated arm named; the runner sets its ratio with `calibrate` before it trains
(recorded in `runs/<arm>/calibration/done.json` with the settings it used, `calibration_setting`; a resumed study
whose pretraining settings differ from the recorded ones calibrates again).
"""

from __future__ import annotations

import inspect
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from data.dataset import RoiDataset
from data.roi_cache import RoiCache
from pretrain.datamodule import RoiDataModule, validation_rows
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
        setting = pretrain_setting(config_path, overrides)
        model = {k: setting("model", k) for k in ("backbone", "input_size", "roi_rule")}
        model |= {k: setting("model", k) for k in ("roi_min_fraction", "exact_counts")}
        augment = setting("data", "augment")
        if augment != "resize":
            raise ValueError(f"the calibration follows the 'resize' augmentation; the pretraining uses {augment!r}")
        with torch.device("meta"):
            trunk, indices = build_timm_trunk(model["backbone"])
        stride = trunk.feature_info[indices[-1]]["reduction"]
        size = int(model["input_size"])
        return cls(
            input_size=size,
            grid_hw=(size // stride, size // stride),
            roi_shape=setting("data", "roi_shape"),
            hflip=float(setting("data", "hflip")),
            roi_rule=model["roi_rule"],
            roi_min_fraction=float(model["roi_min_fraction"]),
            exact_counts=bool(model["exact_counts"]),
        )


@dataclass(frozen=True)
class TrainingItems:
    """Which items pretraining trains on: its manifest (None: the cache's), modality filter, done items only, and
    the validation share and seed whose patients it holds out (`pretrain.datamodule.validation_rows`)."""

    manifest: str | None = None
    modalities: tuple[str, ...] | None = None
    only_done: bool = True
    val_fraction: float = 0.0
    seed: int = 0

    @classmethod
    def from_pretrain_config(cls, config_path: str | Path, overrides: dict[str, Any]) -> TrainingItems:
        """As `pretrain fit --config config_path` with `overrides` selects them (model.seed is the data's seed)."""
        setting = pretrain_setting(config_path, overrides)
        manifest, modalities = setting("data", "manifest"), setting("data", "modalities")
        return cls(
            manifest=None if manifest is None else str(manifest),
            modalities=None if not modalities else tuple(str(m) for m in modalities),
            only_done=bool(setting("data", "only_done")),
            val_fraction=float(setting("data", "val_fraction")),
            seed=int(setting("model", "seed")),
        )


def pretrain_setting(config_path: str | Path, overrides: dict[str, Any]):
    """`setting(section, key)`: the value of `--section.key` in `pretrain fit --config config_path` with
    `overrides`, else the config's, else the default of MaskedPretraining (model) / RoiDataModule (data)."""
    raw = yaml.safe_load(Path(config_path).read_text()) or {}
    owners = {"model": MaskedPretraining, "data": RoiDataModule}

    def setting(section: str, key: str) -> Any:
        dotted = f"{section}.{key}"
        if dotted in overrides:
            return overrides[dotted]
        if key in (raw.get(section) or {}):
            return raw[section][key]
        return inspect.signature(owners[section].__init__).parameters[key].default

    return setting


def calibration_setting(grid: GridSetting, items: TrainingItems) -> dict[str, Any]:
    """What a calibration depends on besides the cache, as recorded in its done.json (JSON types)."""
    return json.loads(json.dumps({"grid": asdict(grid), "items": asdict(items)}))


def cache_roi_cells(
    corpus: Path, cache: Path, grid: GridSetting, items: TrainingItems | None = None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The ROI cells (N,1,h,w) of the training items of `cache` as pretraining sees them, unflipped and flipped,
    and the number of validation items left out."""
    items = items or TrainingItems()
    dataset = RoiDataset(
        corpus,
        items.manifest,
        RoiCache.open(cache, mode="r"),
        transform=square_resize(grid.input_size),
        only_done=items.only_done,
        modalities=items.modalities,
        roi_shape=grid.roi_shape,
    )
    held_out = validation_rows(dataset.manifest.iloc[dataset.indices], items.val_fraction, items.seed)
    train = np.flatnonzero(~held_out)
    if len(train) == 0:
        raise ValueError(f"{cache}: no training item to calibrate on")
    roi_b1HW = torch.stack([dataset[int(i)]["roi"] for i in train]).float()

    def cells(roi: torch.Tensor) -> torch.Tensor:
        return roi_cells(roi, grid.grid_hw, grid.roi_rule, grid.roi_min_fraction)

    return cells(roi_b1HW), cells(roi_b1HW.flip(-1)), int(held_out.sum())


def calibrate(
    corpus: Path, cache: Path, target: Arm, grid: GridSetting, items: TrainingItems | None = None
) -> dict[str, Any]:
    """The expected realised ratio of differentiated arm `target` on its training items of `cache`, and the
    matched random ratio."""
    if target.r_roi is None or target.r_bg is None:
        raise ValueError(f"arm {target.name} is not a differentiated arm: nothing to match")
    items = items or TrainingItems()
    plain, flipped, held_out = cache_roi_cells(corpus, cache, grid, items)
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
        "validation_items_left_out": held_out,
        "roi_cell_share": float(plain.float().mean()),
        "setting": calibration_setting(grid, items),
    }
