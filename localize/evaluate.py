"""Dice and IoU of cached ROIs against ground-truth masks, per modality.

Ground truth: a folder of `<item_id>.png` masks (any non-zero colour = ROI, read by `data.masks`) at each
item's own size, the layout `python -m data sample` writes under `truth/`; or label volumes (NIfTI label volumes,
DICOM SEG objects; `data.label_volumes`) matched to the images by geometry, a label != 0 being ROI. Items without
truth, or not done, are counted and skipped. Used to choose prompts and parameters on evidence rather than by eye.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from data.label_volumes import CorpusLabels
from data.masks import read_mask_image
from data.portable import portable_path
from data.roi_cache import DONE, RoiCache


def dice_iou(pred_hw: np.ndarray, truth_hw: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two binary masks; both empty counts as a perfect match (1, 1)."""
    pred, truth = pred_hw.astype(bool), truth_hw.astype(bool)
    inter = np.logical_and(pred, truth).sum()
    total = pred.sum() + truth.sum()
    union = np.logical_or(pred, truth).sum()
    if total == 0:
        return 1.0, 1.0
    return float(2 * inter / total), float(inter / union)


def evaluate_cache(
    cache: RoiCache, truth_dir: str | Path | None, *, label_volumes: str | Path | None = None, corpus: str | Path = "."
) -> tuple[pd.DataFrame, dict]:
    """Per-item scores (item_id, modality, dice, iou, empty_roi) and a summary per modality and overall. Truth from
    `truth_dir` (<item_id>.png), or from the `label_volumes` list (matched to the images of `corpus`)."""
    if (truth_dir is None) == (label_volumes is None):
        raise ValueError("give a truth folder or a label volume list, one of them")
    truth_dir = None if truth_dir is None else Path(truth_dir)
    if truth_dir is not None and not truth_dir.is_dir():
        raise FileNotFoundError(f"{truth_dir}: ground-truth folder not found")
    table = cache.table()
    volumes = None if label_volumes is None else CorpusLabels(label_volumes, corpus, cache.manifest())
    rows, missing = [], 0
    for index in np.flatnonzero(table["status"].cat.codes.to_numpy() == DONE):
        item = table.iloc[index]
        if volumes is not None:
            truth_hw = volumes.mask(int(index))
            if truth_hw is None:
                missing += 1
                continue
            truth_hw = truth_hw != 0
        elif (truth_dir / f"{item.item_id}.png").is_file():
            truth_hw = read_mask_image(truth_dir / f"{item.item_id}.png")
        else:
            missing += 1
            continue
        pred_hw = cache.read_mask(int(index), truth_hw.shape)
        dice, iou = dice_iou(pred_hw, truth_hw)
        rows.append(
            {
                "item_id": item.item_id,
                "modality": item.modality,
                "dice": dice,
                "iou": iou,
                "empty_roi": bool(item.empty_roi),
            }
        )
    scores = pd.DataFrame(rows, columns=["item_id", "modality", "dice", "iou", "empty_roi"])
    summary = {
        "cache": portable_path(cache.path),
        "untrained_models": bool(cache.provenance.get("untrained", False)),
        "models_label": cache.provenance.get("models_label"),
        "evaluated": len(scores),
        "without_truth": missing,
        "not_done": int((table["status"] != "done").sum()),
        "overall": _stats(scores),
        "per_modality": {m: _stats(g) for m, g in scores.groupby("modality")},
    }
    return scores, summary


def _stats(scores: pd.DataFrame) -> dict:
    if scores.empty:
        return {"n": 0}
    return {
        "n": len(scores),
        "dice_mean": float(scores.dice.mean()),
        "dice_median": float(scores.dice.median()),
        "iou_mean": float(scores.iou.mean()),
        "empty_roi_rate": float(scores.empty_roi.mean()),
    }


def write_report(scores: pd.DataFrame, summary: dict, out: str | Path) -> Path:
    """Write `summary` as JSON at `out` and the per-item table next to it as CSV."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    scores.to_csv(out.with_suffix(".items.csv"), index=False)
    return out
