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
    strips/<key>.png        with --series KEY: the series' slices in slice order, ROI and presence score each

The page references the PNGs by relative path: the OUT folder is self-contained (open index.html from it, or
copy the whole folder). The cache does not record the corpus root, so images need `--corpus`; without it the
panels show saliency, ROI and boxes on a neutral background.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data.portable import portable_path
from data.roi_cache import RoiCache
from localize.viewer.page import UNTRAINED_BANNER, render_html
from localize.viewer.panels import draw_panels
from localize.viewer.selection import select_items
from localize.viewer.stats import cache_statistics, plot_statistics, roi_area_fractions
from localize.viewer.strip import draw_strip, parse_slices, series_rows


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
    series: list[str] | None = None,
    slices: tuple[int, int] | None = None,
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
    for key in series or []:  # bad keys fail before the long work
        series_rows(table, key, slices)

    done = np.flatnonzero((table["status"] == "done").to_numpy())
    area = pd.Series(roi_area_fractions(cache, done, progress), index=table.index[done])
    stats = cache_statistics(cache, table, area)
    plots = plot_statistics(table, area, stats, out)
    panels = draw_panels(cache, table, selection.indices, corpus, out, progress)
    strips = [draw_strip(cache, table, key, corpus, out, slices) for key in series or []]

    stats["plots"] = plots
    stats["panels"] = [vars(p) for p in panels]
    stats["strips"] = [vars(strip) for strip in strips]
    stats["not_drawn"] = selection.skipped
    stats["corpus"] = portable_path(corpus) if corpus is not None else None
    (out / "stats.json").write_text(json.dumps(stats, indent=2), encoding="utf-8")
    (out / "index.html").write_text(render_html(stats, plots, panels, selection, corpus, strips), encoding="utf-8")
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
    parser.add_argument(
        "--series",
        action="append",
        help="draw this series (a prefix of its series_key, e.g. as bench/volume_rule.py prints it) as a strip of "
        "consecutive slices with their ROIs and presence scores; repeatable",
    )
    parser.add_argument("--slices", help="with --series: the slice positions START:STOP to draw (default all)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python -m localize inspect ...` (argv without 'inspect'); 0 on success, 2 with a message on bad input."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    item_ids = [i.strip() for i in args.items.split(",") if i.strip()] if args.items else None
    try:
        slices = parse_slices(args.slices)
        stats = inspect_cache(
            args.cache,
            args.out,
            corpus=args.corpus,
            item_ids=item_ids,
            n=args.n,
            seed=args.seed,
            modality=args.modality,
            progress=not args.no_progress,
            series=args.series,
            slices=slices,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if stats["untrained"]:
        print(f"inspect: {UNTRAINED_BANNER}", file=sys.stderr)
    if args.corpus is None:
        print("inspect: no --corpus given, panels are drawn without images", file=sys.stderr)
    strips = f", {len(stats['strips'])} series strips" if stats["strips"] else ""
    page = Path(args.out) / "index.html"
    print(f"inspect: {len(stats['panels'])} panels{strips}, {len(stats['plots'])} plots -> {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
