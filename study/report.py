"""The study's report: every finished run's results, per arm, as tables and plots under `out` (study.layout).

runs.csv     one row per (arm, seed, downstream, metric): the raw numbers (written here)
then each of REPORT_SECTIONS, a function (runs, config, layout) -> {kind: path}:
results.csv  one row per (arm, downstream, metric): mean, std, n seeds, realised / expected masking ratio
results.md   the same as a markdown table: one row per arm, one column per downstream metric (mean ± std)
<downstream>_<metric>_vs_mask_ratio.png   that metric against the realised overall masking ratio, one line
             per strategy (random, differentiated per ROI source), no pretraining as a horizontal line
comparison.csv / comparison.md   each MWM arm against random masking at the matched realised ratio, the
             shuffled-ROI arm and no pretraining: paired differences over seeds with t-intervals (study.comparison)
<downstream>_<metric>_ci.png   the plot metric against the realised ratio with 95% t-intervals (study.ci_plot)
A new statistic is a module with such a function, added to REPORT_SECTIONS.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from finetune.results import read_results
from study.ci_plot import write_ci_plots
from study.comparison import write_comparison
from study.config import ExperimentConfig
from study.layout import StudyLayout, done_path, read_done
from study.plot import write_plot
from study.summary import write_summary

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
REPORT_SECTIONS = (write_summary, write_plot, write_comparison, write_ci_plots)


def collect_runs(config: ExperimentConfig) -> pd.DataFrame:
    """One row per metric of every finished downstream run (those with a done.json)."""
    layout = StudyLayout(config.out)
    rows = []
    for arm in config.arms:
        for seed in config.seeds:
            pretrain = read_done(layout.pretrain_dir(arm.name, seed)) if arm.pretrains else {}
            if pretrain is None:
                continue
            for task in config.downstream:
                run_dir = layout.downstream_dir(arm.name, seed, task.name)
                done = read_done(run_dir)
                if done is None:
                    continue
                result = read_results(done_path(run_dir, done["results"]))
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
                            "realised_ratio": pretrain.get("realised_ratio", None if arm.pretrains else 0.0),
                            "expected_ratio": pretrain.get("expected_ratio"),
                            "downstream": task.name,
                            "task": result.task,
                            "metric": metric,
                            "value": value,
                        }
                    )
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def write_report(config: ExperimentConfig) -> dict[str, Path]:
    """Write runs.csv and every report section under config.out; returns {kind: path} of what was written."""
    layout = StudyLayout(config.out)
    config.out.mkdir(parents=True, exist_ok=True)
    runs = collect_runs(config)
    paths = {"runs": layout.report_file("runs.csv")}
    runs.to_csv(paths["runs"], index=False)
    for section in REPORT_SECTIONS:
        paths.update(section(runs, config, layout))
    return paths
