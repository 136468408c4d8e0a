"""A series as a strip of consecutive slices (`localize inspect --series KEY`): image, ROI contour, presence score.

The slices are drawn in series order (`slice_index`, never the file or manifest order), left to right and in rows
of `STRIP_COLUMNS`; each title gives the slice position, the presence score (NaN: not computed, the per-slice rule)
and the volume-aware rule's verdict (ABSENT) or an empty ROI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from data.intensity_follow import recorded_intensity
from data.readers import load_image
from data.roi_cache import RoiCache
from localize.viewer.overlay import draw_roi, save_png, show_image

STRIP_DIR = "strips"
STRIP_COLUMNS = 12
MAX_STRIP_SLICES = 96  # a longer series is drawn from its `--slices` range only


@dataclass
class Strip:
    """One drawn series: its PNG (relative to OUT) and the slices on it, in drawing order."""

    series: str  # the key prefix asked for
    file: str
    item_ids: list[str] = field(default_factory=list)
    slice_index: list[int] = field(default_factory=list)
    presence: list[float | None] = field(default_factory=list)
    absent: list[bool] = field(default_factory=list)
    note: str | None = None


def series_rows(table: pd.DataFrame, key: str, slices: tuple[int, int] | None = None) -> pd.DataFrame:
    """The done rows of the one series whose key starts with `key`, sorted by slice_index (within `slices`, a
    half-open [start, stop) range of positions, when given). ValueError when the key matches no or several series."""
    if "series_key" not in table or "slice_index" not in table:
        raise ValueError("this cache has no series keys (made from a manifest without them): no series to draw")
    keys = table["series_key"].dropna().astype(str)
    matches = sorted({k for k in keys.unique() if k.startswith(key)})
    if len(matches) != 1:
        what = "no series" if not matches else f"{len(matches)} series"
        raise ValueError(f"--series {key!r} matches {what} in this cache; give a longer key prefix")
    rows = table[(table["series_key"] == matches[0]) & (table["status"] == "done")]
    if slices is not None:
        rows = rows[(rows["slice_index"] >= slices[0]) & (rows["slice_index"] < slices[1])]
    if rows.empty:
        raise ValueError(f"--series {key!r}: no done slice to draw" + (f" in {slices}" if slices else ""))
    return rows.sort_values("slice_index", kind="stable")


def draw_strip(
    cache: RoiCache,
    table: pd.DataFrame,
    key: str,
    corpus: Path | None,
    out: Path,
    slices: tuple[int, int] | None = None,
) -> Strip:
    """Write out/strips/<key>.png: the series' done slices in slice order with their ROIs and presence scores."""
    rows = series_rows(table, key, slices)
    note = None
    if len(rows) > MAX_STRIP_SLICES:
        note = f"{len(rows)} slices: the first {MAX_STRIP_SLICES} drawn (choose others with --slices START:STOP)"
        rows = rows.iloc[:MAX_STRIP_SLICES]
    intensity = recorded_intensity(cache.provenance)
    n_cols = min(STRIP_COLUMNS, len(rows))
    n_rows = -(-len(rows) // n_cols)
    fig = Figure(figsize=(1.6 * n_cols, 1.9 * n_rows), layout="constrained")
    axes = np.asarray(fig.subplots(n_rows, n_cols, squeeze=False)).ravel()
    strip = Strip(key, f"{STRIP_DIR}/{_safe(key)}.png", note=note)
    for ax, (index, row) in zip(axes, rows.iterrows(), strict=False):
        size_hw = (int(row["height"]), int(row["width"]))
        image = None
        if corpus is not None:
            try:
                image = load_image(corpus, row["path"], int(row["frame"]), row["modality"], intensity)
            except Exception:  # an unreadable image is drawn as the neutral background, never fatal
                image = None
            if image is not None and image.shape[:2] != size_hw:
                image = None
        roi_hw = cache.read_mask(int(index), size_hw).astype(bool)
        show_image(ax, image, size_hw)
        draw_roi(ax, roi_hw, filled=image is None)
        presence = float(row["presence"]) if "presence" in row and pd.notna(row["presence"]) else None
        absent = bool(row.get("absent", False))
        verdict = "ABSENT" if absent else ("empty" if row["empty_roi"] else "")
        score = "p n/a" if presence is None else f"p {presence:.3f}"
        ax.set_title(f"z {int(row['slice_index'])}  {score}\n{verdict}", fontsize=7)
        strip.item_ids.append(str(row["item_id"]))
        strip.slice_index.append(int(row["slice_index"]))
        strip.presence.append(presence)
        strip.absent.append(absent)
    for ax in axes[len(rows) :]:
        ax.set_axis_off()
    fig.suptitle(f"series {key}: {len(rows)} slices in slice order" + (f"\n{note}" if note else ""), fontsize=9)
    (out / STRIP_DIR).mkdir(parents=True, exist_ok=True)
    save_png(fig, out / strip.file)
    return strip


def parse_slices(text: str | None) -> tuple[int, int] | None:
    """'START:STOP' -> (start, stop) slice positions, half-open; None stays None."""
    if text is None:
        return None
    try:
        start, stop = (int(part) for part in text.split(":"))
    except ValueError:
        raise ValueError(f"--slices must be START:STOP (slice positions), got {text!r}") from None
    if stop <= start:
        raise ValueError(f"--slices {text!r}: STOP must be above START")
    return start, stop


def _safe(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in key)
