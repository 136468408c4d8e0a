"""Per-slice vs volume-aware localization on a corpus with truth: per-series Dice, false ROIs, slice agreement.

    python bench/volume_rule.py --corpus SAMPLE --config LOCALIZE.yaml --work DIR [--set KEY=VALUE ...]
                                [--volume '{mode: series, consistency_k: 1}'] [--grid]

Runs `localize run` twice on the corpus (in this process, `workers=0`): the config as given (per-slice, the
release's rule) and with `volume` set (volume-aware), into DIR/slice.zarr and DIR/series.zarr (reused when they
exist), then prints ONE JSON object: for each rule `localize.volume_report.volume_report` against SAMPLE/truth
(per series: Dice on slices with the target, false-ROI rate on slices without it, mean IoU of consecutive slices'
ROIs; their means over series), and the differences (series - slice) of the means.

--grid adds the rule's figures over a grid of its parameters (`GRID`: presence_threshold x min_presence_range x
consistency_k x z_smooth), replayed offline from the two caches (`localize.volume_report.replay_report`), and the
best setting per modality and overall (`_best`): for tuning, on a corpus of another seed than the one measured.
`replay_matches_run` checks the replay against the volume-aware run itself.

The measured corpus: `python -m data sample --mode volumes --n 48 --seed 0` (docs/FIDELITY.md).
The figures mean something only with trained models (e.g. the small models, `models_label`) on series whose target
leaves organ-free slices at the ends; with the untrained stand-ins they only show the command works.
"""

# ruff: noqa: E402  (the sys.path fix below must run before the project imports)
from __future__ import annotations

import sys
from pathlib import Path

# run as `python bench/volume_rule.py`: bench/localize.py would shadow the `localize` package
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import itertools
import json
import logging

import yaml

from data.roi_cache import RoiCache
from localize.config import LocalizeConfig
from localize.driver import run_localization
from localize.volume import VolumeConfig
from localize.volume_report import replay_report, volume_report

GRID = {
    "presence_threshold": (0.3, 0.4, 0.5, 0.6),
    "min_presence_range": (0.005, 0.01, 0.02),
    "consistency_k": (0, 1, 2),
    "z_smooth": (False, True),
}


def _minus(b: float | None, a: float | None) -> float | None:
    return None if a is None or b is None else b - a


def _best(grid: list[dict], per_slice: dict, scope: str) -> dict | None:
    """The grid's setting for `scope` ('all' or a modality): Dice on target slices within 0.02 of the per-slice
    rule's, then the lowest false-ROI rate, then the highest consecutive-slice IoU (the issue's target, in order), then
    the fewest parameters changed from the defaults."""

    def means(report: dict) -> dict:
        return report["mean_over_series"] if scope == "all" else report["mean_by_modality"][scope]

    floor = means(per_slice)["dice_target"] - 0.02
    ok = [g for g in grid if (means(g)["dice_target"] or 0.0) >= floor]
    if not ok:
        return None
    default = VolumeConfig(mode="series")

    def changed(g: dict) -> int:  # ties go to the setting closest to the defaults
        return sum(g[k] != getattr(default, k) for k in GRID)

    best = min(ok, key=lambda g: (means(g)["false_roi_rate"] or 0.0, -(means(g)["consecutive_iou"] or 0.0), changed(g)))
    return {**{k: best[k] for k in GRID}, **means(best)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True, help="a corpus with truth/<item_id>.png")
    parser.add_argument("--config", type=Path, required=True, help="localize config (e.g. the stand-ins' YAML)")
    parser.add_argument("--work", type=Path, required=True, help="folder for the two caches")
    parser.add_argument("--set", action="append", default=[], help="config override KEY=VALUE (both runs)")
    parser.add_argument("--volume", default="{mode: series}", help="the volume-aware run's `volume` (YAML)")
    parser.add_argument("--grid", action="store_true", help="also replay the rule over a grid of its parameters")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    reports, configs = {}, {}
    for name, extra in (("slice", []), ("series", [f"volume={args.volume}"])):
        config = configs[name] = LocalizeConfig.load(args.config, [*args.set, *extra])
        cache_path = args.work / f"{name}.zarr"
        run_localization(config, args.corpus, cache_path, workers=0, progress=False)
        reports[name] = volume_report(RoiCache.open(cache_path), args.corpus / "truth")
    a, b = reports["slice"]["mean_over_series"], reports["series"]["mean_over_series"]
    delta = {k: _minus(b[k], a[k]) for k in a}
    volume = yaml.safe_load(args.volume)
    by_a, by_b = reports["slice"]["mean_by_modality"], reports["series"]["mean_by_modality"]
    by_modality = {m: {k: _minus(by_b[m][k], by_a[m][k]) for k in by_a[m]} for m in by_a}
    out = {"volume": volume, "series_minus_slice": delta, "series_minus_slice_by_modality": by_modality, **reports}
    if args.grid:
        per_slice, series = RoiCache.open(args.work / "slice.zarr"), RoiCache.open(args.work / "series.zarr")
        truth = args.corpus / "truth"
        replay = replay_report(per_slice, series, truth, configs["series"].volume)["mean_over_series"]
        out["replay_matches_run"] = all((replay[k] is None and b[k] is None) or abs(replay[k] - b[k]) < 1e-9 for k in b)
        out["grid"] = [
            {**params, **replay_report(per_slice, series, truth, VolumeConfig(mode="series", **params))}
            for params in (dict(zip(GRID, values, strict=True)) for values in itertools.product(*GRID.values()))
        ]
        scopes = ["all", *reports["slice"]["mean_by_modality"]]
        out["best"] = {scope: _best(out["grid"], reports["slice"], scope) for scope in scopes}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
