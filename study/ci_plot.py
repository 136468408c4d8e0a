"""A report section: the plot metric of every downstream run against the realised masking ratio, with intervals.

One figure per downstream run (`<downstream>_<metric>_ci.png`): each arm is a point at its realised ratio
(averaged over seeds) and its mean metric, with the 95% Student-t interval of that mean over seeds as the error
bar (study.paired.t_interval; none with one seed); points of one strategy line are joined; no pretraining is a
dashed line with its interval as a band. These intervals are per arm (unpaired): each is one arm's spread over
seeds, so two overlapping bars do not mean the arms are alike; the paired differences (same seed = same
downstream randomness), with their own intervals, are in comparison.md. The figure says so under its title.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from study.config import ExperimentConfig
from study.layout import StudyLayout
from study.paired import t_interval

UNPAIRED_NOTE = "intervals per arm (unpaired); paired differences and their intervals: comparison.md"


def arm_intervals(runs: pd.DataFrame, downstream: str, metric: str, level: float = 0.95) -> pd.DataFrame:
    """Per arm: line, strategy, realised ratio (mean over seeds), mean, interval low / high, n seeds."""
    rows = []
    selected = runs[(runs.downstream == downstream) & (runs.metric == metric)]
    for (arm, line, strategy), group in selected.groupby(["arm", "line", "strategy"], sort=False):
        ci = t_interval(group["value"].to_numpy(), level)
        rows.append([arm, line, strategy, group["realised_ratio"].mean(), ci.mean, ci.low, ci.high, ci.n])
    return pd.DataFrame(rows, columns=["arm", "line", "strategy", "realised_ratio", "mean", "low", "high", "n"])


def plot_intervals(points: pd.DataFrame, out: Path, ylabel: str, title: str) -> Path:
    """Draw `arm_intervals` output into `out` (interval_figure)."""
    interval_figure(points, ylabel, title).savefig(out)
    return out


def interval_figure(points: pd.DataFrame, ylabel: str, title: str) -> Figure:
    """`arm_intervals` output as a figure: one line per strategy, t-interval error bars, no pretraining as a band,
    and under the title the note that these intervals are per arm (unpaired)."""
    fig = Figure(figsize=(6.5, 4.2), dpi=120)  # no pyplot: nothing global, no display needed
    ax = fig.subplots()
    for line, group in points[points.strategy != "none"].groupby("line", sort=True):
        group = group.sort_values("realised_ratio")
        below = (group["mean"] - group["low"]).fillna(0).to_numpy()
        above = (group["high"] - group["mean"]).fillna(0).to_numpy()
        ax.errorbar(group.realised_ratio, group["mean"], yerr=[below, above], marker="o", capsize=3, label=line)
    for row in points[points.strategy == "none"].itertuples():
        ax.axhline(row.mean, color="grey", linestyle="--", label=f"{row.arm} (no pretraining)")
        if not math.isnan(row.low):
            ax.axhspan(row.low, row.high, color="grey", alpha=0.15)
    ax.set_xlabel("overall masking ratio (realised, averaged over pretraining steps and seeds)")
    ax.set_ylabel(ylabel)
    ax.set_title(title + "\n" + UNPAIRED_NOTE, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def write_ci_plots(runs: pd.DataFrame, config: ExperimentConfig, layout: StudyLayout) -> dict[str, Path]:
    """One plot per downstream run of the config's plot metric (when that run has it)."""
    paths = {}
    for task in config.downstream:
        points = arm_intervals(runs, task.name, config.plot_metric)
        if points.empty:
            continue
        out = layout.report_file(f"{task.name}_{config.plot_metric}_ci.png")
        title = f"{config.name}: {task.name} {config.plot_metric}, per-arm mean and 95% t-interval over seeds"
        paths[f"ci_plot_{task.name}"] = plot_intervals(points, out, f"{task.name} {config.plot_metric}", title)
    return paths
