"""What each masking arm lets the encoder see of the ROI, from the ROIs on the grid (no training).

Prints one JSON object. For the ROI cache's done items, put on the grid exactly as pretraining does
(`study.matched.GridSetting` / `cache_roi_cells`, unflipped and flipped), each masking is sampled `--draws`
times per image with the pretraining's own samplers, and per arm it reports:
  realised_ratio        share of cells masked
  roi_hidden_share      share of images in which no ROI cell stays visible
  roi_visible_pixels    share of ROI pixels (the expanded ROI, at input resolution) that stay visible: the nearest
                        rule reads one pixel per cell, so ROI pixels also lie in cells that count as background
  roi_loss_share        share of the masked cells (the loss's terms) that are ROI cells

    python bench/mask_visibility.py --corpus work/experiment/control_corpus \
        --cache work/experiment/positive_control/rois/gt/cache.zarr [--config configs/pretrain/control_cpu.yaml]
"""

from __future__ import annotations

import argparse
import json

import torch

from data.dataset import RoiDataset
from data.roi_cache import RoiCache
from pretrain.masking import sample_differentiated_mask, sample_random_mask
from pretrain.transforms import square_resize
from study.matched import GridSetting, cache_roi_cells, matched_mask_ratio, realised_ratio


def visibility(cells_b1hw: torch.Tensor, roi_b1HW: torch.Tensor, active_b1hw: torch.Tensor) -> dict[str, float]:
    scale = roi_b1HW.shape[-1] // cells_b1hw.shape[-1]
    active_b1HW = active_b1hw.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
    roi_visible = (cells_b1hw & active_b1hw).flatten(1).any(1)
    has_roi = cells_b1hw.flatten(1).any(1)
    masked = ~active_b1hw
    return {
        "realised_ratio": float(masked.double().mean()),
        "roi_hidden_share": float((has_roi & ~roi_visible).double().sum() / has_roi.sum().clamp_min(1)),
        "roi_visible_pixels": float((roi_b1HW.bool() & active_b1HW).sum() / roi_b1HW.bool().sum().clamp_min(1)),
        "roi_loss_share": float((masked & cells_b1hw).sum() / masked.sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--config", default="configs/pretrain/control_cpu.yaml")
    parser.add_argument("--pairs", default="0.8,0.4;0.7,0.3;0.6,0.2", help="MWM (r_roi, r_bg) pairs, ';'-separated")
    parser.add_argument("--random", default="0.6", help="random ratios besides the matched ones, ','-separated")
    parser.add_argument("--draws", type=int, default=8)
    args = parser.parse_args()
    grid = GridSetting.from_pretrain_config(args.config, {})
    plain, flipped = cache_roi_cells(args.corpus, args.cache, grid)
    dataset = RoiDataset(
        args.corpus, None, RoiCache.open(args.cache, mode="r"), transform=square_resize(grid.input_size)
    )
    roi = torch.stack([dataset[i]["roi"] for i in range(len(dataset))]).float()
    cells = torch.cat([plain, flipped]).repeat(args.draws, 1, 1, 1)
    rois = torch.cat([roi, roi.flip(-1)]).repeat(args.draws, 1, 1, 1)
    generator = torch.Generator().manual_seed(0)
    n_cells = grid.grid_hw[0] * grid.grid_hw[1]
    arms: dict[str, dict[str, float]] = {}
    ratios = [float(r) for r in args.random.split(",") if r]
    for pair in args.pairs.split(";"):
        r_roi, r_bg = (float(v) for v in pair.split(","))
        active = sample_differentiated_mask(cells, r_roi, r_bg, generator=generator)
        arms[f"mwm-{r_roi:g}-{r_bg:g}"] = visibility(cells, rois, active)
        ratios.append(matched_mask_ratio(realised_ratio(cells, r_roi, r_bg), n_cells))
    for ratio in sorted(set(ratios)):
        active = sample_random_mask(len(cells), grid.grid_hw, ratio, generator=generator)
        arms[f"random-{ratio:.4f}"] = visibility(cells, rois, active)
    roi_cells = plain.flatten(1).sum(1)
    print(
        json.dumps(
            {
                "items": int(len(plain)),
                "grid": list(grid.grid_hw),
                "roi_cells_mean": float(roi_cells.float().mean()),
                "roi_cells_histogram": torch.bincount(roi_cells, minlength=n_cells + 1).tolist(),
                "arms": arms,
            }
        )
    )


if __name__ == "__main__":
    main()
