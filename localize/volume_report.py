"""Per-series quality of a cache's ROIs against truth: what the volume-aware rule is meant to improve.

Per series (slices in `slice_index` order, done items with a truth file `<item_id>.png`, as `localize eval`):
- `dice_target`: mean Dice over the slices whose truth has the target;
- `false_roi_rate`: share of the slices whose truth is empty (organ-free) that got a non-empty ROI;
- `consecutive_iou`: mean IoU of the ROIs of consecutive slices (adjacent slice positions), over the pairs where
  at least one ROI is non-empty.
`bench/volume_rule.py` prints this for a per-slice cache and a volume-aware cache of the same corpus, as JSON;
`replay_report` applies other parameters of the rule offline (the per-slice ROIs, saliency and the presence scores
do not depend on them), for tuning on a separate corpus.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from data.masks import read_mask_image
from data.roi_cache import DONE, RoiCache
from localize.evaluate import dice_iou
from localize.volume import VolumeConfig, smoothed_support, volume_rule


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def series_scores(pred_zhw: np.ndarray, truth_zhw: np.ndarray, slice_index: np.ndarray) -> dict:
    """The three figures for one series (see the module docstring); masks in any row order."""
    order = np.argsort(slice_index, kind="stable")
    pred, truth, positions = pred_zhw[order].astype(bool), truth_zhw[order].astype(bool), slice_index[order]
    target = truth.any(axis=(1, 2))
    dice = [dice_iou(p, t)[0] for p, t, has in zip(pred, truth, target, strict=True) if has]
    free_with_roi = [bool(p.any()) for p, has in zip(pred, target, strict=True) if not has]
    ious = [
        dice_iou(pred[z], pred[z + 1])[1]
        for z in range(len(pred) - 1)
        if positions[z + 1] - positions[z] == 1 and (pred[z].any() or pred[z + 1].any())
    ]
    return {
        "slices": len(pred),
        "target_slices": int(target.sum()),
        "dice_target": _mean(dice),
        "false_roi_rate": _mean([float(x) for x in free_with_roi]),
        "consecutive_iou": _mean(ious),
    }


def _summary(per_series: dict[str, dict]) -> dict:
    return {
        name: _mean([s[name] for s in per_series.values() if s[name] is not None])
        for name in ("dice_target", "false_roi_rate", "consecutive_iou")
    }


def _by_modality(per_series: dict[str, dict]) -> dict:
    """The means over the series of each modality (a rule may work for one organ and not another)."""
    modalities = sorted({s["modality"] for s in per_series.values()})
    return {m: _summary({k: s for k, s in per_series.items() if s["modality"] == m}) for m in modalities}


def replay_report(per_slice: RoiCache, presence_from: RoiCache, truth_dir: str | Path, config: VolumeConfig) -> dict:
    """`volume_report` of the cache that `series_pass(config)` would make from `per_slice` (a per-slice run), with the
    presence scores of `presence_from` (a volume-aware run of the same corpus, matched by item_id): the rule at the
    cache's S x S, as the pass applies it, without running the models again."""
    truth_dir = Path(truth_dir)
    table = per_slice.table()
    table = table[per_slice.status() == DONE]
    presence = presence_from.table().set_index("item_id")["presence"]
    refine = {"threshold": 0.3, "top_k": 2, **per_slice.provenance.get("refine", {})}
    s = per_slice.mask_size
    per_series = {}
    for key, rows in table.groupby("series_key", sort=True):
        have = [i for i in rows.index if (truth_dir / f"{rows.item_id[i]}.png").is_file()]
        if len(have) < 2:
            continue
        positions = rows.slice_index[have].to_numpy()
        masks = np.stack([per_slice.read_mask(int(i), (s, s)).astype(bool) for i in have])
        if config.z_smooth:
            maps = np.stack([per_slice.read_saliency(int(i), (s, s)) for i in have])
            masks = smoothed_support(masks, maps, positions, refine["threshold"], refine["top_k"])
        presence_z = presence.reindex(rows.item_id[have]).to_numpy(dtype=np.float64)
        masks, _absent = volume_rule(masks, presence_z, positions, config)
        truth = [read_mask_image(truth_dir / f"{rows.item_id[i]}.png") for i in have]
        pred = [  # as RoiCache.read_mask resizes
            cv2.resize(m.astype(np.uint8), (t.shape[1], t.shape[0]), interpolation=cv2.INTER_NEAREST_EXACT)
            for m, t in zip(masks, truth, strict=True)
        ]
        scores = series_scores(np.stack(pred), np.stack(truth), positions)
        per_series[str(key)[:12]] = {"modality": str(rows.modality.iloc[0]), **scores}
    return {
        "rule": config.provenance(),
        "series": len(per_series),
        "mean_over_series": _summary(per_series),
        "mean_by_modality": _by_modality(per_series),
    }


def volume_report(cache: RoiCache, truth_dir: str | Path) -> dict:
    """Per-series figures of `cache` against the truth folder, and their means over the series."""
    truth_dir = Path(truth_dir)
    if not truth_dir.is_dir():
        raise FileNotFoundError(f"{truth_dir}: ground-truth folder not found")
    table = cache.table()
    if "series_key" not in table:
        raise ValueError(f"{cache.path}: no series keys; a volume report needs a cache made from a manifest with them")
    table = table[(cache.status() == DONE)]
    per_series = {}
    for key, rows in table.groupby("series_key", sort=True):
        have = [i for i in rows.index if (truth_dir / f"{rows.item_id[i]}.png").is_file()]
        if len(have) < 2:  # a 2-D image is not a series
            continue
        truth = [read_mask_image(truth_dir / f"{rows.item_id[i]}.png") for i in have]
        pred = [cache.read_mask(int(i), t.shape) for i, t in zip(have, truth, strict=True)]
        scores = series_scores(np.stack(pred), np.stack(truth), rows.slice_index[have].to_numpy())
        # a prefix of the keyed hash: enough to tell series apart (and for `localize inspect --series`)
        per_series[str(key)[:12]] = {"modality": str(rows.modality.iloc[0]), **scores}
    summary = _summary(per_series)
    return {
        "cache": str(cache.path),
        "rule": cache.provenance.get("volume", {}).get("rule", "slice (the release)"),
        "series": len(per_series),
        "mean_over_series": summary,
        "mean_by_modality": _by_modality(per_series),
        "per_series": per_series,
    }
