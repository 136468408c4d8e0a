"""Table and plot of a masking-strategy study (study): every finished run's results JSON, per arm.

runs.csv     one row per (arm, seed, downstream, metric): the raw numbers
results.csv  one row per (arm, downstream, metric): mean, std, n seeds, realised / expected masking ratio
results.md   the same as a markdown table: one row per arm, one column per downstream metric (mean ± std)
<downstream>_<metric>_vs_mask_ratio.png   that metric against the realised overall masking ratio, one line
             per strategy (random, differentiated per ROI source), no pretraining as a horizontal line
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from finetune.results import read_results  # noqa: E402

if TYPE_CHECKING:
    from study.runner import ExperimentConfig

RUN_COLUMNS = [
    "arm",
    "line",
    "strategy",
    "rois",
    "r_roi",
    "r_bg",
    "mask_ratio",
    "seed",
    "realised_ratio",
    "expected_ratio",
    "downstream",
    "task",
    "metric",
    "value",
]


def collect_runs(config: ExperimentConfig) -> pd.DataFrame:
    """One row per metric of every finished downstream run (those with a done.json)."""
    rows = []
    for arm in config.arms:
        for seed in config.seeds:
            seed_dir = config.out / "runs" / arm.name / f"s{seed}"
            pretrain = _done(seed_dir / "pretrain") if arm.strategy != "none" else {}
            if pretrain is None:
                continue
            for task in config.downstream:
                done = _done(seed_dir / task.name)
                if done is None:
                    continue
                result = read_results(done["results"])
                for metric, value in result.metrics.items():
                    rows.append(
                        {
                            "arm": arm.name,
                            "line": arm.line,
                            "strategy": arm.strategy,
                            "rois": arm.rois,
                            "r_roi": arm.r_roi,
                            "r_bg": arm.r_bg,
                            "mask_ratio": arm.mask_ratio,
                            "seed": seed,
                            "realised_ratio": pretrain.get("realised_ratio", 0.0 if arm.strategy == "none" else None),
                            "expected_ratio": pretrain.get("expected_ratio"),
                            "downstream": task.name,
                            "task": result.task,
                            "metric": metric,
                            "value": value,
                        }
                    )
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def _done(run_dir: Path) -> dict | None:
    path = run_dir / "done.json"
    return json.loads(path.read_text()) if path.is_file() else None


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """mean ± std over seeds per (arm, downstream, metric), with the arm's realised masking ratio."""
    keys = ["arm", "line", "strategy", "rois", "r_roi", "r_bg", "mask_ratio", "downstream", "task", "metric"]
    grouped = runs.groupby(keys, dropna=False, sort=False)
    table = grouped.agg(
        mean=("value", "mean"),
        std=("value", "std"),
        n_seeds=("seed", "nunique"),
        realised_ratio=("realised_ratio", "mean"),
        expected_ratio=("expected_ratio", "mean"),
    )
    return table.reset_index()


def markdown_table(summary: pd.DataFrame, table_metrics: dict[str, tuple[str, ...]]) -> str:
    """One row per arm: strategy, ROIs, nominal ratios, realised ratio, n seeds, then 'mean ± std' per metric."""
    if summary.empty:
        return "_no finished runs yet_\n"
    shown = summary[[m in table_metrics.get(t, ()) for t, m in zip(summary.task, summary.metric, strict=True)]]
    arms = summary.drop_duplicates("arm").set_index("arm")
    columns = list(dict.fromkeys(f"{d} {m}" for d, m in zip(shown.downstream, shown.metric, strict=True)))
    header = ["arm", "strategy", "ROIs", "nominal", "realised ratio", "seeds", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm, row in arms.iterrows():
        nominal = {"random": f"{row.mask_ratio:g}", "differentiated": f"{row.r_roi:g} / {row.r_bg:g}"}
        rois = row.rois if row.strategy == "differentiated" else "-"  # random arms only borrow the item list
        cells = [
            arm,
            row.strategy,
            rois,
            nominal.get(row.strategy, "-"),
            "-" if pd.isna(row.realised_ratio) or row.strategy == "none" else f"{row.realised_ratio:.3f}",
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


def plot_metric(summary: pd.DataFrame, downstream: str, metric: str, out: Path, title: str) -> Path:
    """`metric` of `downstream` (mean ± std over seeds) against the realised masking ratio, one line per strategy."""
    data = summary[(summary.downstream == downstream) & (summary.metric == metric)]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
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
    plt.close(fig)
    return out


def write_report(config: ExperimentConfig) -> dict[str, Path]:
    """Write runs.csv, results.csv, results.md and the plot under config.out; returns their paths."""
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    runs = collect_runs(config)
    summary = summarize(runs) if len(runs) else pd.DataFrame(columns=[*RUN_COLUMNS, "mean", "std", "n_seeds"])
    paths = {
        "runs": out / "runs.csv",
        "table": out / "results.csv",
        "markdown": out / "results.md",
        "plot": out / f"{config.plot_downstream}_{config.plot_metric}_vs_mask_ratio.png",
    }
    runs.to_csv(paths["runs"], index=False)
    summary.to_csv(paths["table"], index=False)
    paths["markdown"].write_text(markdown_table(summary, config.table_metrics))
    plot_metric(
        summary,
        config.plot_downstream,
        config.plot_metric,
        paths["plot"],
        f"{config.name}: {config.plot_downstream} vs masking ratio",
    )
    return paths
