"""`python -m localize inspect`: overlay panels and statistics of a ROI cache, gathered in one HTML page.

Writes into OUT::

    index.html              the page: banner (untrained models), summary, statistics plots, panels, provenance
    stats.json              the numbers behind the plots (counts, rates, failure reasons, distributions, provenance)
    stats_status.png        items per modality and status
    stats_area.png          ROI area fraction histogram per modality (done items)
    stats_empty_roi.png     empty-ROI rate per modality
    stats_scores.png        localizer score histogram per modality
    stats_failures.png      failure reasons (counts)
    panels/<item_id>.png    image | saliency | ROI contour | SAM boxes, one file per selected item (rewritten)

The page references the PNGs by relative path: the OUT folder is self-contained (open index.html from it, or
copy the whole folder). The cache does not record the corpus root, so images need `--corpus`; without it the
panels show saliency, ROI and boxes on a neutral background.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr
from matplotlib.figure import Figure
from tqdm import tqdm

from data.readers import load_image
from data.roi_cache import RoiCache
from localize.viewer.overlay import item_panel

UNTRAINED_BANNER = "ROIs from UNTRAINED stand-in models carry no meaning"
STAT_PLOTS = {
    "status": "stats_status.png",
    "area": "stats_area.png",
    "empty_roi": "stats_empty_roi.png",
    "scores": "stats_scores.png",
    "failures": "stats_failures.png",
}
PANEL_DIR = "panels"


@dataclass
class Panel:
    """One drawn item: where its PNG is (relative to OUT) and what the page says about it."""

    index: int
    item_id: str
    modality: str
    file: str
    note: str | None = None


@dataclass
class Selection:
    """Item indices to draw, plus the requested ones that cannot be drawn (with why)."""

    indices: list[int]
    skipped: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ selection
def select_items(
    table: pd.DataFrame,
    *,
    item_ids: list[str] | None = None,
    n: int = 12,
    seed: int = 0,
    modality: str | None = None,
) -> Selection:
    """Done items to draw: the named `item_ids` in the given order, else `n` random ones stratified by modality.

    Stratified: modalities take turns (sorted by name), each contributing its items in a seeded random order,
    until `n` are chosen or none are left. `modality` restricts either way. Unknown ids raise ValueError;
    named items that are not done are skipped and reported in `Selection.skipped`.
    """
    done = table["status"] == "done"
    if modality is not None:
        known = sorted(table["modality"].unique())
        if modality not in known:
            raise ValueError(f"modality {modality!r} is not in this cache (it has {known})")
    if item_ids is not None:
        position = pd.Series(table.index, index=table["item_id"])
        unknown = [i for i in item_ids if i not in position.index]
        if unknown:
            raise ValueError(f"item ids not in this cache: {', '.join(unknown)}")
        chosen, skipped = [], {}
        for item_id in dict.fromkeys(item_ids):  # keeps order, drops repeats
            index = int(position[item_id])
            row = table.loc[index]
            if modality is not None and row["modality"] != modality:
                skipped[item_id] = f"modality {row['modality']}, not {modality}"
            elif not done[index]:
                why = f": {row['reason']}" if row["reason"] else ""
                skipped[item_id] = f"{row['status']}{why}"
            else:
                chosen.append(index)
        return Selection(chosen, skipped)
    if n < 0:
        raise ValueError(f"--n must be >= 0, got {n}")
    candidates = table[done if modality is None else done & (table["modality"] == modality)]
    rng = np.random.default_rng(seed)
    queues = {m: list(rng.permutation(group.index.to_numpy())) for m, group in sorted(candidates.groupby("modality"))}
    chosen = []
    while len(chosen) < n and any(queues.values()):
        for queue in queues.values():
            if queue and len(chosen) < n:
                chosen.append(int(queue.pop(0)))
    return Selection(chosen)


# ------------------------------------------------------------------------------------------ statistics
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
        return {
            "items": len(rows),
            "done": n_done,
            "failed": int((rows["status"] == "failed").sum()),
            "pending": int((rows["status"] == "pending").sum()),
            "empty_roi": empty,
            "empty_roi_rate": empty / n_done if n_done else None,
            "area_fraction": _distribution(area.reindex(rows.index[done]).to_numpy()),
            "score": _distribution(rows.loc[done, "score"].to_numpy()),
        }

    failed = table[table["status"] == "failed"]
    reasons = Counter(failure_kind(r, p) for r, p in zip(failed["reason"], failed["path"], strict=True))
    return {
        "cache": str(cache.path),
        "untrained": bool(cache.provenance.get("untrained", False)),
        **counts(table),
        "failure_reasons": dict(reasons.most_common()),
        "per_modality": {str(m): counts(rows) for m, rows in sorted(table.groupby("modality", observed=True))},
        "provenance": cache.provenance,
    }


# ------------------------------------------------------------------------------------------ plots
def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=100)


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
    _save(fig, out / STAT_PLOTS["status"])

    fig = _histograms(done, area, modalities, "ROI area fraction", (0.0, 1.0))
    _save(fig, out / STAT_PLOTS["area"])
    fig = _histograms(done, done["score"], modalities, "localizer score", None)
    _save(fig, out / STAT_PLOTS["scores"])

    fig = Figure(figsize=(6, 3.2), layout="constrained")
    ax = fig.subplots()
    rates = [per[m]["empty_roi_rate"] or 0.0 for m in modalities] + [stats["empty_roi_rate"] or 0.0]
    labels = [f"{m}\n({per[m]['empty_roi']}/{per[m]['done']})" for m in modalities]
    labels.append(f"all\n({stats['empty_roi']}/{stats['done']})")
    ax.bar(labels, rates, color=["#5c6bc0"] * len(modalities) + ["#283593"])
    ax.set(title="empty-ROI rate (share of done items)", ylim=(0, 1), ylabel="rate")
    _save(fig, out / STAT_PLOTS["empty_roi"])

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
    _save(fig, out / STAT_PLOTS["failures"])
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


# ------------------------------------------------------------------------------------------ panels
def draw_panels(
    cache: RoiCache, table: pd.DataFrame, indices: list[int], corpus: Path | None, out: Path, progress: bool = True
) -> list[Panel]:
    """Write one overlay PNG per item into out/panels (replacing earlier panels there); an unreadable image is
    noted on its panel, never fatal."""
    (out / PANEL_DIR).mkdir(parents=True, exist_ok=True)
    for old in (out / PANEL_DIR).glob("*.png"):  # a re-run into the same OUT must not leave stale panels behind
        old.unlink()
    panels = []
    for index in tqdm(indices, desc="panels", unit="item", disable=not progress):
        row = table.loc[index]
        size_hw = (int(row["height"]), int(row["width"]))
        image, note = None, None
        if corpus is not None:
            try:
                image = load_image(corpus, row["path"], int(row["frame"]), row["modality"])
            except Exception as e:  # one unreadable image must not stop the report
                note = f"image not drawn: {type(e).__name__}: {e}"
            if image is not None and image.shape[:2] != size_hw:
                note = (
                    f"image not drawn: its size {image.shape[:2]} differs from the cache's {size_hw}; "
                    "is --corpus the corpus this cache was made from?"
                )
                image = None
        title = f"{row['item_id']}  {row['modality']}  {row['path']}#{int(row['frame'])}  score {row['score']:.3f}"
        if row["empty_roi"]:
            title += "  EMPTY ROI"
        fig = item_panel(
            image, cache.read_saliency(index), cache.read_mask(index), cache.read_boxes(index), title, note
        )
        file = f"{PANEL_DIR}/{row['item_id']}.png"
        _save(fig, out / file)
        panels.append(Panel(int(index), str(row["item_id"]), str(row["modality"]), file, note))
    return panels


# ------------------------------------------------------------------------------------------ HTML
_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
.banner { background: #b71c1c; color: white; font-size: 1.6em; font-weight: bold; padding: 0.8em 1em;
          border-radius: 6px; margin-bottom: 1em; }
.note { color: #8d6e00; }
table.summary td, table.summary th { padding: 2px 10px; text-align: right; }
img { max-width: 100%; border: 1px solid #ddd; margin: 4px 0; }
figure { margin: 0 0 1.2em 0; }
pre { background: #f5f5f5; padding: 1em; overflow-x: auto; }
"""


def render_html(
    stats: dict[str, Any], plots: dict[str, str], panels: list[Panel], selection: Selection, corpus: Path | None
) -> str:
    """The report page; every string from the cache is HTML-escaped."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>ROI cache: {e(stats['cache'])}</title><style>{_CSS}</style></head><body>",
    ]
    if stats["untrained"]:
        parts.append(f"<div class='banner' id='untrained'>{e(UNTRAINED_BANNER)}</div>")
    parts.append(f"<h1>ROI cache <code>{e(stats['cache'])}</code></h1>")
    rate = stats["empty_roi_rate"]
    parts.append(
        f"<p>{stats['items']} items: {stats['done']} done, {stats['failed']} failed, {stats['pending']} pending; "
        f"empty ROI in {stats['empty_roi']} of the done items ({'n/a' if rate is None else f'{rate:.1%}'}).</p>"
    )
    parts.append(
        "<table class='summary'><tr><th>modality</th><th>items</th><th>done</th><th>failed</th>"
        "<th>pending</th><th>empty ROI</th><th>median ROI area</th><th>median score</th></tr>"
    )
    for modality, m in stats["per_modality"].items():
        area, score = m["area_fraction"]["median"], m["score"]["median"]
        parts.append(
            f"<tr><td>{e(modality)}</td><td>{m['items']}</td><td>{m['done']}</td><td>{m['failed']}</td>"
            f"<td>{m['pending']}</td><td>{m['empty_roi']}</td>"
            f"<td>{'' if area is None else f'{area:.1%}'}</td><td>{'' if score is None else f'{score:.3f}'}</td></tr>"
        )
    parts.append("</table>")

    parts.append("<h2>Statistics</h2>")
    for name, file in plots.items():
        parts.append(f"<figure><img src='{e(file)}' alt='{e(name)}'></figure>")
    if stats["failure_reasons"]:
        parts.append("<h3>Failure reasons</h3><ul>")
        parts += [f"<li>{count} &times; <code>{e(r)}</code></li>" for r, count in stats["failure_reasons"].items()]
        parts.append("</ul>")

    parts.append(f"<h2>Items ({len(panels)})</h2>")
    if corpus is None:
        parts.append(
            "<p class='note'>No <code>--corpus</code> given: the panels show saliency, ROI and boxes "
            "without the images (the cache does not record the corpus root).</p>"
        )
    if selection.skipped:
        parts.append("<p class='note'>Not drawn:</p><ul>")
        parts += [f"<li><code>{e(i)}</code>: {e(why)}</li>" for i, why in selection.skipped.items()]
        parts.append("</ul>")
    for panel in panels:
        note = f"<figcaption class='note'>{e(panel.note)}</figcaption>" if panel.note else ""
        parts.append(
            f"<figure id='{e(panel.item_id)}'><img src='{e(panel.file)}' alt='{e(panel.item_id)}'>{note}</figure>"
        )

    parts.append("<h2>Provenance</h2>")
    parts.append(f"<pre>{e(json.dumps(stats['provenance'], indent=2, sort_keys=True))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------ entry points
def inspect_cache(
    cache_path: str | Path,
    out: str | Path,
    *,
    corpus: str | Path | None = None,
    item_ids: list[str] | None = None,
    n: int = 12,
    seed: int = 0,
    modality: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the report (see the module docstring) into `out`; returns the statistics written to stats.json."""
    cache = RoiCache.open(cache_path)
    corpus = Path(corpus) if corpus is not None else None
    if corpus is not None and not corpus.is_dir():
        raise FileNotFoundError(f"{corpus}: corpus folder not found")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = cache.table()
    selection = select_items(table, item_ids=item_ids, n=n, seed=seed, modality=modality)

    done = np.flatnonzero((table["status"] == "done").to_numpy())
    area = pd.Series(roi_area_fractions(cache, done, progress), index=table.index[done])
    stats = cache_statistics(cache, table, area)
    plots = plot_statistics(table, area, stats, out)
    panels = draw_panels(cache, table, selection.indices, corpus, out, progress)

    stats["plots"] = plots
    stats["panels"] = [vars(p) for p in panels]
    stats["not_drawn"] = selection.skipped
    stats["corpus"] = str(corpus) if corpus is not None else None
    (out / "stats.json").write_text(json.dumps(stats, indent=2), encoding="utf-8")
    (out / "index.html").write_text(render_html(stats, plots, panels, selection, corpus), encoding="utf-8")
    return stats


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m localize inspect",
        description="Overlay panels and statistics of a ROI cache, gathered in OUT/index.html.",
    )
    parser.add_argument("--cache", required=True, help="ROI cache (CACHE.zarr)")
    parser.add_argument("--out", required=True, help="output folder (index.html, stats.json, PNGs)")
    parser.add_argument("--corpus", help="corpus root the cache was made from; needed to draw the images")
    parser.add_argument("--items", help="comma-separated item ids to draw (instead of a random subset)")
    parser.add_argument("--n", type=int, default=12, help="random done items to draw, stratified by modality (12)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random subset (0)")
    parser.add_argument("--modality", help="draw items of this modality only (statistics cover the whole cache)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python -m localize inspect ...` (argv without 'inspect'); 0 on success, 2 with a message on bad input."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    item_ids = [i.strip() for i in args.items.split(",") if i.strip()] if args.items else None
    try:
        stats = inspect_cache(
            args.cache,
            args.out,
            corpus=args.corpus,
            item_ids=item_ids,
            n=args.n,
            seed=args.seed,
            modality=args.modality,
            progress=not args.no_progress,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if stats["untrained"]:
        print(f"inspect: {UNTRAINED_BANNER}", file=sys.stderr)
    if args.corpus is None:
        print("inspect: no --corpus given, panels are drawn without images", file=sys.stderr)
    print(f"inspect: {len(stats['panels'])} panels, {len(stats['plots'])} plots -> {Path(args.out) / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
