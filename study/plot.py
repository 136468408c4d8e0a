"""A downstream metric (mean ± std over seeds) against the realised masking ratio, one line per strategy."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from study.config import ExperimentConfig
from study.layout import StudyLayout
from study.summary import summarize


def plot_metric(summary: pd.DataFrame, downstream: str, metric: str, out: Path, title: str) -> Path:
    """`metric` of `downstream` (mean ± std over seeds) against the realised masking ratio, one line per strategy;
    no pretraining as a horizontal line."""
    data = summary[(summary.downstream == downstream) & (summary.metric == metric)]
    fig = Figure(figsize=(6, 4), dpi=120)  # no pyplot: nothing global, no display needed
    ax = fig.subplots()
    for line, points in data[data.strategy != "none"].groupby("line", sort=True):
        points = points.sort_values("realised_ratio")
        ax.errorbar(
            points.realised_ratio, points["mean"], yerr=points["std"].fillna(0), marker="o", capsize=3, label=line
        )
    baseline = data[data.strategy == "none"]
    if len(baseline):
        mean, std = float(baseline["mean"].iloc[0]), baseline["std"].iloc[0]
        ax.axhline(mean, color="grey", linestyle="--", label="no pretraining")
        if not pd.isna(std):
            ax.axhspan(mean - std, mean + std, color="grey", alpha=0.15)
    ax.set_xlabel("overall masking ratio (realised, averaged over pretraining steps)")
    ax.set_ylabel(f"{downstream} {metric}")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    return out


def write_plot(runs: pd.DataFrame, config: ExperimentConfig, layout: StudyLayout) -> dict[str, Path]:
    """The plot the config names (`plot: {downstream, metric}`)."""
    out = layout.report_file(f"{config.plot_downstream}_{config.plot_metric}_vs_mask_ratio.png")
    title = f"{config.name}: {config.plot_downstream} vs masking ratio"
    return {"plot": plot_metric(summarize(runs), config.plot_downstream, config.plot_metric, out, title)}
