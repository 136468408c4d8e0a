"""A report section: the plot metric of every downstream run against the realised masking ratio, with intervals.

One figure per downstream run (`<downstream>_<metric>_ci.png`): each arm is a point at its realised ratio
(averaged over seeds) and its mean metric, with the 95% Student-t interval of that mean over seeds as the error
bar (study.paired.t_interval; none with one seed); points of one strategy line are joined; no pretraining is a
dashed line with its interval as a band. The paired differences themselves are in comparison.md.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from study.config import ExperimentConfig
from study.layout import StudyLayout
from study.paired import t_interval


def arm_intervals(runs: pd.DataFrame, downstream: str, metric: str, level: float = 0.95) -> pd.DataFrame:
    """Per arm: line, strategy, realised ratio (mean over seeds), mean, interval low / high, n seeds."""
    rows = []
    selected = runs[(runs.downstream == downstream) & (runs.metric == metric)]
    for (arm, line, strategy), group in selected.groupby(["arm", "line", "strategy"], sort=False):
        ci = t_interval(group["value"].to_numpy(), level)
        rows.append([arm, line, strategy, group["realised_ratio"].mean(), ci.mean, ci.low, ci.high, ci.n])
    return pd.DataFrame(rows, columns=["arm", "line", "strategy", "realised_ratio", "mean", "low", "high", "n"])


def plot_intervals(points: pd.DataFrame, out: Path, ylabel: str, title: str) -> Path:
    """Draw `arm_intervals` output: one line per strategy, t-interval error bars, no pretraining as a band."""
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
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    return out


def write_ci_plots(runs: pd.DataFrame, config: ExperimentConfig, layout: StudyLayout) -> dict[str, Path]:
    """One plot per downstream run of the config's plot metric (when that run has it)."""
    paths = {}
    for task in config.downstream:
        points = arm_intervals(runs, task.name, config.plot_metric)
        if points.empty:
            continue
        out = layout.report_file(f"{task.name}_{config.plot_metric}_ci.png")
        title = f"{config.name}: {task.name} {config.plot_metric}, mean and 95% t-interval over seeds"
        paths[f"ci_plot_{task.name}"] = plot_intervals(points, out, f"{task.name} {config.plot_metric}", title)
    return paths
