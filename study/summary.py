"""Mean ± std over seeds per (arm, downstream, metric): results.csv and the markdown table results.md."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from study.config import ExperimentConfig
from study.layout import StudyLayout

SUMMARY_KEYS = ["arm", "line", "strategy", "rois", "r_roi", "r_bg", "mask_ratio", "downstream", "task", "metric"]


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """mean ± std over seeds per (arm, downstream, metric), with the arm's realised masking ratio."""
    if runs.empty:
        return pd.DataFrame(columns=[*runs.columns, "mean", "std", "n_seeds"])
    grouped = runs.groupby(SUMMARY_KEYS, dropna=False, sort=False)
    table = grouped.agg(
        mean=("value", "mean"),
        std=("value", "std"),
        n_seeds=("seed", "nunique"),
        realised_ratio=("realised_ratio", "mean"),
        expected_ratio=("expected_ratio", "mean"),
    )
    return table.reset_index()


def markdown_table(summary: pd.DataFrame, config: ExperimentConfig) -> str:
    """One row per arm: strategy, ROIs, nominal ratios, realised ratio, n seeds, then 'mean ± std' per metric."""
    if summary.empty:
        return "_no finished runs yet_\n"
    table_metrics = config.table_metrics
    arms_by_name = {arm.name: arm for arm in config.arms}
    shown = summary[[m in table_metrics.get(t, ()) for t, m in zip(summary.task, summary.metric, strict=True)]]
    arms = summary.drop_duplicates("arm").set_index("arm")
    columns = list(dict.fromkeys(f"{d} {m}" for d, m in zip(shown.downstream, shown.metric, strict=True)))
    header = ["arm", "strategy", "ROIs", "nominal", "realised ratio", "seeds", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm, row in arms.iterrows():
        spec = arms_by_name[arm]
        cells = [
            arm,
            row.strategy,
            spec.roi_label,  # random arms only borrow the item list of their ROI source
            spec.nominal,
            "-" if pd.isna(row.realised_ratio) or not spec.pretrains else f"{row.realised_ratio:.3f}",
            str(int(summary[summary.arm == arm].n_seeds.max())),
        ]
        for column in columns:
            match = shown[(shown.arm == arm) & (shown.downstream + " " + shown.metric == column)]
            cells.append(_mean_std(match["mean"].iloc[0], match["std"].iloc[0]) if len(match) else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _mean_std(mean: float, std: float) -> str:
    if pd.isna(mean):
        return "n/a"
    return f"{mean:.3f} ± {std:.3f}" if not pd.isna(std) else f"{mean:.3f}"


def write_summary(runs: pd.DataFrame, config: ExperimentConfig, layout: StudyLayout) -> dict[str, Path]:
    """results.csv (the summary) and results.md (its table)."""
    summary = summarize(runs)
    paths = {"table": layout.report_file("results.csv"), "markdown": layout.report_file("results.md")}
    summary.to_csv(paths["table"], index=False)
    paths["markdown"].write_text(markdown_table(summary, config))
    return paths
