"""The comparison that answers the study's question, as a report section: comparison.csv and comparison.md.

For every differentiated (MWM) arm with finished runs, its paired difference over seeds (study.paired) to
- random masking at the matched realised ratio: the random arm calibrated for it (`matches`), else the random
  arm whose realised ratio (averaged over its runs) is nearest; both ratios are shown, since random masking
  realises only multiples of 1/N. It is "matched" only when the two realised ratios lie within one grid cell
  (1/N) of each other; farther (or with N unknown and no calibration for this arm) it is the "nearest random";
- the shuffled-ROI arm with the same (r_roi, r_bg) (unless the arm is itself that control): same ratio, ROIs in
  the wrong place; does the ROI's content matter?
- no pretraining: is the pretraining worth anything here?
and every random arm's paired difference to no pretraining (the first question: does pretraining learn at all?),
for every downstream run and each of its table metrics. A positive difference means the MWM arm scored higher.
Each row has Student's t-interval and p-value, the exact sign-flip p-value, a zero-spread flag, and both
p-values Holm-adjusted over every row of the table (the family: all comparisons of one study's report).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from study.arms import Arm
from study.config import ExperimentConfig
from study.layout import StudyLayout, read_done
from study.matched import GridSetting
from study.paired import holm, paired_differences, sign_flip_p, t_interval

MATCHED, SHUFFLED, NONE = "random at the matched ratio", "shuffled ROIs", "no pretraining"
NEAREST = "nearest random (not matched: over one grid cell away)"
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
    "p_sign_flip",
    "zero_spread",
    "p_value_holm",
    "p_sign_flip_holm",
]


def realised_ratios(runs: pd.DataFrame) -> dict[str, float]:
    """Each arm's realised masking ratio, averaged over its seeds (one value per (arm, seed) in runs)."""
    per_run = runs.drop_duplicates(["arm", "seed"]).dropna(subset=["realised_ratio"])
    return per_run.groupby("arm")["realised_ratio"].mean().to_dict()


def reference_arms(
    arm: Arm, config: ExperimentConfig, ratios: dict[str, float], n_cells: int | None = None
) -> list[tuple[str, str]]:
    """[(relation, reference arm)] for differentiated `arm` among the arms that have finished runs (`ratios`);
    `n_cells`: the mask grid's cell count, for the one-cell test of a random reference (None: unknown)."""
    finished = [a for a in config.arms if a.name in ratios]
    out: list[tuple[str, str]] = []
    randoms = [a for a in finished if a.strategy == "random"]
    calibrated = [a for a in randoms if a.matches == arm.name]
    if calibrated:
        random = calibrated[0]
    elif randoms and arm.name in ratios:
        random = min(randoms, key=lambda a: abs(ratios[a.name] - ratios[arm.name]))
    else:
        random = None
    if random is not None:
        if n_cells is None:  # no grid to measure the gap on: only a calibration vouches for the match
            matched = bool(calibrated)
        else:
            matched = abs(ratios[random.name] - ratios[arm.name]) <= 1.0 / n_cells + 1e-9
        out.append((MATCHED if matched else NEAREST, random.name))
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


def compare(
    runs: pd.DataFrame, config: ExperimentConfig, level: float = 0.95, n_cells: int | None = None
) -> pd.DataFrame:
    """One row per (MWM arm, reference, downstream, metric): paired difference over seeds, its t-interval, the
    sign-flip p-value and both p-values Holm-adjusted over the table; `n_cells` as in `reference_arms`."""
    ratios = realised_ratios(runs)
    ratios.update({a.name: 0.0 for a in config.arms if a.strategy == "none" and a.name in set(runs.arm)})
    rows = []
    nones = [(NONE, a.name) for a in config.arms if a.strategy == "none" and a.name in ratios]
    for arm in config.arms:
        if arm.strategy not in ("differentiated", "random") or arm.name not in ratios:
            continue
        # a random arm against no pretraining first: is pretraining worth anything here at all?
        references = reference_arms(arm, config, ratios, n_cells) if arm.strategy == "differentiated" else nones
        for versus, reference in references:
            for task in config.downstream:
                for metric in config.table_metrics.get(task.task, ()):
                    diffs = paired_differences(runs, arm.name, reference, task.name, metric)
                    if diffs.empty:
                        continue
                    ci = t_interval(diffs.to_numpy(), level)
                    rows.append(
                        [arm.name, versus, reference, task.name, metric, ratios[arm.name], ratios[reference]]
                        + [ci.n, ci.mean, ci.sd, ci.low, ci.high, ci.p_value, sign_flip_p(diffs.to_numpy())]
                        + [ci.zero_spread, math.nan, math.nan]
                    )
    table = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    table["p_value_holm"] = holm(table["p_value"].to_numpy())
    table["p_sign_flip_holm"] = holm(table["p_sign_flip"].to_numpy())
    return table


def grid_cells(config: ExperimentConfig, layout: StudyLayout) -> int | None:
    """The mask grid's cell count: from a matched arm's calibration record, else from the pretraining config;
    None when neither tells (e.g. an augmentation the grid reading does not follow)."""
    for arm in config.arms:
        record = read_done(layout.calibration_dir(arm.name)) if arm.matches else None
        if record and "grid" in record:
            return int(record["grid"][0]) * int(record["grid"][1])
    try:
        grid = GridSetting.from_pretrain_config(config.pretrain_config, config.pretrain_args)
    except (ValueError, OSError, KeyError, RuntimeError):
        return None
    return grid.grid_hw[0] * grid.grid_hw[1]


def comparison_markdown(table: pd.DataFrame, level: float = 0.95) -> str:
    """The comparison as a markdown table: difference [CI], t and sign-flip p-values (raw and Holm-adjusted)
    per (MWM arm, reference, downstream metric), and what the statistics mean."""
    if table.empty:
        return "_no MWM arm with finished runs to compare yet_\n"
    pct = f"{level:.0%}"
    header = ["arm", "compared with", "reference arm", "realised ratios", "downstream metric", "seeds"]
    header += [f"difference [{pct} CI, paired t over seeds]", "p (t)", "p (sign-flip, exact)"]
    header += ["Holm p (t)", "Holm p (sign-flip)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.itertuples():
        if row.zero_spread:
            interval = "ZERO SPREAD: every seed gives this difference; no t-interval"
        elif math.isnan(row.ci_low):
            interval = "n/a (one seed)"
        else:
            interval = f"[{row.ci_low:+.3f}, {row.ci_high:+.3f}]"
        cells = [
            row.arm,
            row.versus,
            row.reference,
            f"{row.arm_ratio:.3f} vs " + ("-" if row.versus == NONE else f"{row.reference_ratio:.3f}"),
            f"{row.downstream} {row.metric}",
            str(row.n_seeds),
            f"{row.difference:+.3f} {interval}",
        ]
        cells += [_p(v) for v in (row.p_value, row.p_sign_flip, row.p_value_holm, row.p_sign_flip_holm)]
        lines.append("| " + " | ".join(cells) + " |")
    family = int(table["p_sign_flip"].notna().sum())
    floor = 2.0 ** (1 - int(table["n_seeds"].max()))
    note = (
        f"\nDifference = arm minus reference, per seed (same seed = same downstream randomness), then the "
        f"mean with its {pct} Student-t interval over the seeds both finished (n - 1 degrees of freedom). "
        "p (t): Student's two-sided p; none when every seed gives the same difference (zero spread: t is "
        "undefined, and a zero-width interval is not certainty). p (sign-flip, exact): the share of the 2^n "
        "sign patterns of the n per-seed differences whose mean is at least as far from 0 as the observed one; "
        f"it needs no normality and cannot go below 2^(1-n) ({floor:.4g} with {int(table['n_seeds'].max())} "
        f"seeds). Holm: both p-values adjusted (Holm's step-down) over the family of all {family} comparisons "
        'in this table (every arm, reference, downstream run and metric). "Random at the matched ratio": '
        "realised ratios within one grid cell (1/N) of each other; otherwise the random arm is only the "
        "nearest one.\n"
    )
    return "\n".join(lines) + "\n" + note


def _p(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def write_comparison(runs: pd.DataFrame, config: ExperimentConfig, layout: StudyLayout) -> dict[str, Path]:
    """comparison.csv and comparison.md."""
    table = compare(runs, config, n_cells=grid_cells(config, layout))
    paths = {"comparison": layout.report_file("comparison.csv"), "comparison_md": layout.report_file("comparison.md")}
    table.to_csv(paths["comparison"], index=False)
    paths["comparison_md"].write_text(comparison_markdown(table))
    return paths
