"""Numbers and plots of a whole ROI cache: counts per status and modality, ROI areas, scores, failure reasons."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr
from matplotlib.figure import Figure
from tqdm import tqdm

from data.portable import portable_path
from data.roi_cache import RoiCache
from localize.viewer.overlay import save_png

STAT_PLOTS = {
    "status": "stats_status.png",
    "area": "stats_area.png",
    "empty_roi": "stats_empty_roi.png",
    "scores": "stats_scores.png",
    "failures": "stats_failures.png",
}


def roi_area_fractions(cache: RoiCache, indices: np.ndarray, progress: bool = False) -> np.ndarray:
    """ROI area fraction (0..1) of each item in `indices`, from the stored S x S masks, read shard by shard."""
    masks = zarr.open_group(cache.path, mode="r")["mask"]
    indices = np.asarray(indices, dtype=np.int64)
    areas = np.full(len(indices), np.nan, dtype=np.float64)
    shard_of = indices // cache.shard_items
    shards = np.unique(shard_of)
    for shard in tqdm(shards, desc="ROI areas", unit="shard", disable=not progress or len(shards) < 2):
        sel = np.flatnonzero(shard_of == shard)
        lo, hi = int(indices[sel].min()), int(indices[sel].max()) + 1
        block_nss = masks[lo:hi]
        areas[sel] = block_nss[indices[sel] - lo].mean(axis=(1, 2))
    return areas


def failure_kind(reason: str, relpath: str) -> str:
    """A failure reason with the item's own file path replaced by <file>, so equal causes count together."""
    return re.sub(r"\S*" + re.escape(relpath), "<file>", reason) if relpath else reason


def _distribution(values: np.ndarray) -> dict[str, float | int | None]:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"n": 0, "mean": None, "median": None, "min": None, "max": None}
    return {
        "n": int(values.size),
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def cache_statistics(cache: RoiCache, table: pd.DataFrame, area: pd.Series) -> dict[str, Any]:
    """Counts, rates and distributions of the whole cache, overall and per modality (JSON-ready).

    `area` is the ROI area fraction of the done items, indexed like `table`.
    """

    def counts(rows: pd.DataFrame) -> dict[str, Any]:
        done = rows["status"] == "done"
        n_done = int(done.sum())
        empty = int((done & rows["empty_roi"]).sum())
        absent = int((done & rows["absent"]).sum()) if "absent" in rows else 0  # the volume rule (localize.volume)
        return {
            "items": len(rows),
            "done": n_done,
            "failed": int((rows["status"] == "failed").sum()),
            "pending": int((rows["status"] == "pending").sum()),
            "empty_roi": empty,
            "empty_roi_rate": empty / n_done if n_done else None,
            "absent": absent,
            "presence": _distribution(rows.loc[done, "presence"].to_numpy() if "presence" in rows else []),
            "area_fraction": _distribution(area.reindex(rows.index[done]).to_numpy()),
            "score": _distribution(rows.loc[done, "score"].to_numpy()),
        }

    failed = table[table["status"] == "failed"]
    reasons = Counter(failure_kind(r, p) for r, p in zip(failed["reason"], failed["path"], strict=True))
    return {
        "cache": portable_path(cache.path),
        "untrained": bool(cache.provenance.get("untrained", False)),
        **counts(table),
        "failure_reasons": dict(reasons.most_common()),
        "per_modality": {str(m): counts(rows) for m, rows in sorted(table.groupby("modality", observed=True))},
        "provenance": cache.provenance,
    }


def plot_statistics(table: pd.DataFrame, area: pd.Series, stats: dict[str, Any], out: Path) -> dict[str, str]:
    """Write the statistics PNGs into `out`; returns {plot name: file name}."""
    modalities = list(stats["per_modality"])
    per = stats["per_modality"]
    done = table[table["status"] == "done"]

    fig = Figure(figsize=(6, 3.2), layout="constrained")
    ax = fig.subplots()
    bottom = np.zeros(len(modalities))
    for status, color in (("done", "#4caf50"), ("failed", "#e53935"), ("pending", "#9e9e9e")):
        values = np.array([per[m][status] for m in modalities])
        ax.bar(modalities, values, bottom=bottom, label=status, color=color)
        bottom += values
    ax.set(title="items per modality and status", ylabel="items")
    ax.legend(fontsize=8)
    save_png(fig, out / STAT_PLOTS["status"])

    fig = _histograms(done, area, modalities, "ROI area fraction", (0.0, 1.0))
    save_png(fig, out / STAT_PLOTS["area"])
    fig = _histograms(done, done["score"], modalities, "localizer score", None)
    save_png(fig, out / STAT_PLOTS["scores"])

    fig = Figure(figsize=(6, 3.2), layout="constrained")
    ax = fig.subplots()
    rates = [per[m]["empty_roi_rate"] or 0.0 for m in modalities] + [stats["empty_roi_rate"] or 0.0]
    labels = [f"{m}\n({per[m]['empty_roi']}/{per[m]['done']})" for m in modalities]
    labels.append(f"all\n({stats['empty_roi']}/{stats['done']})")
    ax.bar(labels, rates, color=["#5c6bc0"] * len(modalities) + ["#283593"])
    ax.set(title="empty-ROI rate (share of done items)", ylim=(0, 1), ylabel="rate")
    save_png(fig, out / STAT_PLOTS["empty_roi"])

    reasons = stats["failure_reasons"]
    fig = Figure(figsize=(8, 1.6 + 0.35 * max(1, len(reasons))), layout="constrained")
    ax = fig.subplots()
    if reasons:
        names = [r if len(r) <= 90 else r[:87] + "..." for r in reasons]
        ax.barh(names[::-1], list(reasons.values())[::-1], color="#e53935")
        ax.tick_params(axis="y", labelsize=7)
        ax.set(xlabel="items")
    else:
        ax.text(0.5, 0.5, "no failed items", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    ax.set_title(f"failure reasons ({stats['failed']} failed items)")
    save_png(fig, out / STAT_PLOTS["failures"])
    return dict(STAT_PLOTS)


def _histograms(
    done: pd.DataFrame, values: pd.Series, modalities: list[str], what: str, value_range: tuple[float, float] | None
) -> Figure:
    """One histogram per modality (done items), side by side, sharing the x axis."""
    fig = Figure(figsize=(3.2 * max(1, len(modalities)), 3.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(1, len(modalities)), sharex=True, squeeze=False)[0])
    finite = values.reindex(done.index).to_numpy(dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if value_range is None:
        value_range = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if value_range[0] == value_range[1]:
            value_range = (value_range[0] - 0.5, value_range[1] + 0.5)
    for ax, modality in zip(axes, modalities or ["(none)"], strict=False):
        rows = done.index[done["modality"] == modality]
        v = values.reindex(rows).to_numpy(dtype=np.float64)
        v = v[np.isfinite(v)]
        ax.hist(v, bins=20, range=value_range, color="#26a69a")
        ax.set(title=f"{modality} (n={v.size})", xlabel=what)
    axes[0].set_ylabel("items")
    fig.suptitle(f"{what} per modality (done items)", fontsize=10)
    return fig
