"""The comparison that answers the study's question, as a report section: comparison.csv and comparison.md.

For every differentiated (MWM) arm with finished runs, its paired difference over seeds (study.paired) to
- random masking at the matched realised ratio: the random arm calibrated for it (`matches`), else the random
  arm whose realised ratio (averaged over its runs) is nearest; both ratios are shown, since random masking
  realises only multiples of 1/N;
- the shuffled-ROI arm with the same (r_roi, r_bg) (unless the arm is itself that control): same ratio, ROIs in
  the wrong place; does the ROI's content matter?
- no pretraining: is the pretraining worth anything here?
for every downstream run and each of its table metrics. A positive difference means the MWM arm scored higher.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from study.arms import Arm
from study.config import ExperimentConfig
from study.layout import StudyLayout
from study.paired import paired_differences, t_interval

MATCHED, SHUFFLED, NONE = "random at the matched ratio", "shuffled ROIs", "no pretraining"
COMPARISON_COLUMNS = [
    "arm",
    "versus",
    "reference",
    "downstream",
    "metric",
    "arm_ratio",
    "reference_ratio",
    "n_seeds",
    "difference",
    "sd",
    "ci_low",
    "ci_high",
    "p_value",
]


def realised_ratios(runs: pd.DataFrame) -> dict[str, float]:
    """Each arm's realised masking ratio, averaged over its seeds (one value per (arm, seed) in runs)."""
    per_run = runs.drop_duplicates(["arm", "seed"]).dropna(subset=["realised_ratio"])
    return per_run.groupby("arm")["realised_ratio"].mean().to_dict()


def reference_arms(arm: Arm, config: ExperimentConfig, ratios: dict[str, float]) -> list[tuple[str, str]]:
    """[(relation, reference arm)] for differentiated `arm` among the arms that have finished runs (`ratios`)."""
    finished = [a for a in config.arms if a.name in ratios]
    out: list[tuple[str, str]] = []
    randoms = [a for a in finished if a.strategy == "random"]
    calibrated = [a for a in randoms if a.matches == arm.name]
    if calibrated:
        out.append((MATCHED, calibrated[0].name))
    elif randoms and arm.name in ratios:
        out.append((MATCHED, min(randoms, key=lambda a: abs(ratios[a.name] - ratios[arm.name])).name))
    if not _is_shuffled(arm, config):
        for other in finished:
            same_ratios = (other.r_roi, other.r_bg) == (arm.r_roi, arm.r_bg)
            if other.strategy == "differentiated" and _is_shuffled(other, config) and same_ratios:
                out.append((SHUFFLED, other.name))
    out += [(NONE, a.name) for a in finished if a.strategy == "none"]
    return out


def _is_shuffled(arm: Arm, config: ExperimentConfig) -> bool:
    source = config.rois.get(arm.rois) if arm.rois else None
    return source is not None and source.kind == "shuffled"


def compare(runs: pd.DataFrame, config: ExperimentConfig, level: float = 0.95) -> pd.DataFrame:
    """One row per (MWM arm, reference, downstream, metric): paired difference over seeds and its t-interval."""
    ratios = realised_ratios(runs)
    ratios.update({a.name: 0.0 for a in config.arms if a.strategy == "none" and a.name in set(runs.arm)})
    rows = []
    for arm in config.arms:
        if arm.strategy != "differentiated" or arm.name not in ratios:
            continue
        for versus, reference in reference_arms(arm, config, ratios):
            for task in config.downstream:
                for metric in config.table_metrics.get(task.task, ()):
                    diffs = paired_differences(runs, arm.name, reference, task.name, metric)
                    if diffs.empty:
                        continue
                    ci = t_interval(diffs.to_numpy(), level)
                    rows.append(
                        [arm.name, versus, reference, task.name, metric, ratios[arm.name], ratios[reference]]
                        + [ci.n, ci.mean, ci.sd, ci.low, ci.high, ci.p_value]
                    )
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def comparison_markdown(table: pd.DataFrame, level: float = 0.95) -> str:
    """The comparison as a markdown table: difference [CI] per (MWM arm, reference, downstream metric)."""
    if table.empty:
        return "_no MWM arm with finished runs to compare yet_\n"
    pct = f"{level:.0%}"
    header = ["MWM arm", "compared with", "reference arm", "realised ratios", "downstream metric", "seeds"]
    header += [f"difference [{pct} CI, paired t over seeds]", "p"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.itertuples():
        interval = "n/a (one seed)" if math.isnan(row.ci_low) else f"[{row.ci_low:+.3f}, {row.ci_high:+.3f}]"
        cells = [
            row.arm,
            row.versus,
            row.reference,
            f"{row.arm_ratio:.3f} vs " + ("-" if row.versus == NONE else f"{row.reference_ratio:.3f}"),
            f"{row.downstream} {row.metric}",
            str(row.n_seeds),
            f"{row.difference:+.3f} {interval}",
            "-" if math.isnan(row.p_value) else f"{row.p_value:.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        f"\nDifference = MWM arm minus reference, per seed (same seed = same downstream randomness), then the "
        f"mean with its {pct} Student-t interval over the seeds both finished (n - 1 degrees of freedom).\n"
    )
    return "\n".join(lines) + "\n" + note


def write_comparison(runs: pd.DataFrame, config: ExperimentConfig, layout: StudyLayout) -> dict[str, Path]:
    """comparison.csv and comparison.md."""
    table = compare(runs, config)
    paths = {"comparison": layout.report_file("comparison.csv"), "comparison_md": layout.report_file("comparison.md")}
    table.to_csv(paths["comparison"], index=False)
    paths["comparison_md"].write_text(comparison_markdown(table))
    return paths
