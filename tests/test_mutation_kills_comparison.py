"""Kill tests for study/comparison.py (issue 30): the comparison table of the masking study on hand-made per-seed
results whose differences, t-intervals, sign-flip and Holm p-values are worked out below by hand, the reference
arms picked for asymmetric ratios, the grid's cell count, comparison.csv / comparison.md as written, and the
markdown table and its legend read back as whole text."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from study.comparison import (
    MATCHED,
    NEAREST,
    NONE,
    SHUFFLED,
    compare,
    comparison_markdown,
    grid_cells,
    realised_ratios,
    reference_arms,
    write_comparison,
)
from study.config import ExperimentConfig
from study.layout import StudyLayout, write_done

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
T_95_DF2 = 2.919985580353724  # Student t, 95% quantile, 2 degrees of freedom (tables: 2.920): a 90% interval
GT, SHUF, RAND, CAL = "mwm-gt-0.8-0.4", "mwm-shuffled-0.8-0.4", "random-0.6", "random-matched-mwm-gt-0.8-0.4"


def _config(**changes) -> ExperimentConfig:
    """The positive control's arms (none, random-0.6, two calibrated randoms, gt / shuffled / small MWM), with
    a third downstream run of a task that has no table metrics."""
    raw = yaml.safe_load((CONFIGS / "experiment" / "positive_control.yaml").read_text())
    raw["downstream"].append({"name": "seg", "task": "segment", "config": "unused.yaml"})
    raw["pretrain"]["config"] = str(CONFIGS / "pretrain" / "control_cpu.yaml")
    return ExperimentConfig.from_dict(raw | changes)


def _p_df2(t: float) -> float:
    """Student's two-sided p with 2 degrees of freedom in closed form."""
    return 1 - t / math.sqrt(2 + t * t)


def _runs() -> pd.DataFrame:
    """linear_probe auroc per seed (no accuracy except one MWM row, so the accuracy comparisons are empty):
    none 0.50 0.52 0.51; random-0.6 0.60 0.65 0.58; mwm-gt 0.70 0.73 0.70 and an unpaired seed 3.
    Realised ratios: none NaN (not recorded); random 0.6; mwm-gt 0.44, 0.47, 0.47, 0.46 by seed (mean 0.46), its
    seed 0 on two rows (accuracy and auroc), its seed 1 with a NaN in another column."""
    rows = []

    def add(arm, seed, value, ratio, metric="auroc", note="x"):
        rows.append(dict(arm=arm, seed=seed, downstream="linear_probe", metric=metric, value=value))
        rows[-1] |= {"realised_ratio": ratio, "note": note}

    for seed, value in enumerate((0.50, 0.52, 0.51)):
        add("none", seed, value, math.nan)
    for seed, value in enumerate((0.60, 0.65, 0.58)):
        add(RAND, seed, value, 0.6)
    add(GT, 0, 0.9, 0.44, metric="accuracy")
    for seed, (value, ratio) in enumerate(zip((0.70, 0.73, 0.70, 0.9), (0.44, 0.47, 0.47, 0.46), strict=True)):
        add(GT, seed, value, ratio, note=math.nan if seed == 1 else "x")
    return pd.DataFrame(rows)


def test_realised_ratio_is_one_value_per_seed_averaged_over_seeds():
    # mwm-gt: seeds 0-3 give 0.44, 0.47, 0.47, 0.46 -> 0.46 (per row it would be 2.28 / 5; without the seed with
    # a NaN elsewhere (0.44 + 0.47 + 0.46) / 3); none: no ratio recorded, no entry
    ratios = realised_ratios(_runs())
    assert ratios.keys() == {RAND, GT} and ratios[GT] == pytest.approx(0.46, abs=1e-12) and ratios[RAND] == 0.6


def test_compare_on_hand_made_seeds():
    table = compare(_runs(), _config(), level=0.9)
    # only auroc rows: accuracy exists for mwm-gt alone (skipped, and auroc still follows it); finetune and seg
    # have no runs, seg's task no table metrics. Arms in config order, mwm-gt's references: the nearest random
    # (its calibrated random has no runs; no grid given: not "matched"), no pretraining.
    keys = list(zip(table.arm, table.versus, table.reference, table.downstream, table.metric, strict=True))
    assert keys == [
        (RAND, NONE, "none", "linear_probe", "auroc"),
        (GT, NEAREST, RAND, "linear_probe", "auroc"),
        (GT, NONE, "none", "linear_probe", "auroc"),
    ]
    # differences: random - none 0.10 0.13 0.07 (mean 0.10, sd 0.03); mwm - random 0.10 0.08 0.12 (0.10, 0.02);
    # mwm - none 0.20 0.21 0.19 (0.20, 0.01); t = mean / (sd / sqrt 3)
    means, sds = [0.10, 0.10, 0.20], [0.03, 0.02, 0.01]
    assert table.difference.tolist() == pytest.approx(means) and table.sd.tolist() == pytest.approx(sds)
    assert table.n_seeds.tolist() == [3, 3, 3]
    half = [T_95_DF2 * sd / math.sqrt(3) for sd in sds]
    assert table.ci_low.tolist() == pytest.approx([m - h for m, h in zip(means, half, strict=True)])
    assert table.ci_high.tolist() == pytest.approx([m + h for m, h in zip(means, half, strict=True)])
    p = [_p_df2(m / (sd / math.sqrt(3))) for m, sd in zip(means, sds, strict=True)]  # 0.0287, 0.0131, 0.00083
    assert table.p_value.tolist() == pytest.approx(p, rel=1e-9)
    # Holm over the family of 3: 0.00083 x 3, 0.0131 x 2, 0.0287 x 1 (already increasing)
    assert table.p_value_holm.tolist() == pytest.approx([p[0], 2 * p[1], 3 * p[2]], rel=1e-9)
    # every difference positive: only the all-plus and all-minus patterns of 8 reach the sum; Holm: 3 x 0.25
    assert table.p_sign_flip.tolist() == pytest.approx([0.25] * 3)
    assert table.p_sign_flip_holm.tolist() == pytest.approx([0.75] * 3)
    assert not table.zero_spread.any()
    # realised ratios: no pretraining counts as 0 (not recorded in its runs)
    assert table.arm_ratio.tolist() == pytest.approx([0.6, 0.46, 0.46])
    assert table.reference_ratio.tolist() == pytest.approx([0.0, 0.6, 0.0])


def test_a_grid_of_four_cells_makes_the_same_random_matched():
    table = compare(_runs(), _config(), n_cells=4)  # 0.6 - 0.46 = 0.14 <= 1/4
    assert table.versus.tolist() == [NONE, MATCHED, NONE]


def test_reference_arms_with_asymmetric_ratios():
    config = _config()
    arm = next(a for a in config.arms if a.name == GT)
    # no random finished: no random reference (and the shuffled control, then no pretraining)
    assert reference_arms(arm, config, {GT: 0.46, SHUF: 0.47, "none": 0.0}) == [(SHUFFLED, SHUF), (NONE, "none")]
    # the arm itself without a ratio: no nearest random can be measured
    assert reference_arms(arm, config, {RAND: 0.6, "none": 0.0}) == [(NONE, "none")]
    # nearest by distance: 0.6 is 0.14 away, the other calibration's random (0.3) 0.16 (by sum: 0.3 would win)
    ratios = {RAND: 0.6, "random-matched-mwm-small-0.8-0.4": 0.3, GT: 0.46}
    assert reference_arms(arm, config, ratios) == [(NEAREST, RAND)]
    assert reference_arms(arm, config, ratios, n_cells=4) == [(MATCHED, RAND)]
    assert reference_arms(arm, config, ratios, n_cells=8) == [(NEAREST, RAND)]  # 0.14 > 1/8
    # exactly one cell apart is still matched (0.75 - 0.5 = 1/4 exactly)
    assert reference_arms(arm, config, {RAND: 0.75, GT: 0.5}, n_cells=4) == [(MATCHED, RAND)]
    # the shuffled arm is not compared with itself, nor with another shuffled arm
    shuffled = next(a for a in config.arms if a.name == SHUF)
    assert reference_arms(shuffled, config, {SHUF: 0.47, GT: 0.46}) == []


def test_grid_cells_ignore_a_record_of_an_arm_that_matches_nothing(tmp_path):
    config = _config()
    layout = StudyLayout(tmp_path)
    for arm, grid in ((RAND, [2, 3]), (CAL, [5, 7])):  # random-0.6 comes first in the config, matches nothing
        layout.calibration_dir(arm).mkdir(parents=True)
        write_done(layout.calibration_dir(arm), {"grid": grid})
    assert grid_cells(config, layout) == 35


def test_grid_cells_fall_back_to_the_pretraining_config(tmp_path):
    # no calibration record: control_cpu.yaml's resnet10_narrow_os8 has stride 8; at 64 px (the config's size)
    # 8 x 8 cells, at 96 px (an override in the study's pretrain args) 12 x 12
    assert grid_cells(_config(), StudyLayout(tmp_path)) == 64
    pretrain = {"config": str(CONFIGS / "pretrain" / "control_cpu.yaml"), "args": {"model.input_size": 96}}
    config = _config(pretrain=pretrain)
    assert grid_cells(config, StudyLayout(tmp_path)) == 144


def test_write_comparison_writes_the_table_and_its_markdown(tmp_path):
    layout = StudyLayout(tmp_path)
    layout.calibration_dir(CAL).mkdir(parents=True)
    write_done(layout.calibration_dir(CAL), {"grid": [2, 2]})  # 4 cells: random-0.6 is within one cell
    paths = write_comparison(_runs(), _config(), layout)
    assert paths == {"comparison": tmp_path / "comparison.csv", "comparison_md": tmp_path / "comparison.md"}
    csv = pd.read_csv(paths["comparison"])
    assert list(csv.columns) == [
        *("arm", "versus", "reference", "downstream", "metric", "arm_ratio", "reference_ratio", "n_seeds"),
        *("difference", "sd", "ci_low", "ci_high", "p_value", "p_sign_flip", "zero_spread", "p_value_holm"),
        "p_sign_flip_holm",
    ]
    assert csv.versus.tolist() == [NONE, MATCHED, NONE] and csv.difference.tolist() == pytest.approx([0.1, 0.1, 0.2])
    assert csv.ci_low[1] == pytest.approx(0.1 - 4.302652729749464 * 0.02 / math.sqrt(3))  # the default 95%
    text = paths["comparison_md"].read_text()
    assert text.splitlines()[3] == (
        f"| {GT} | {MATCHED} | {RAND} | 0.460 vs 0.600 | linear_probe auroc | 3 | +0.100 [+0.050, +0.150] "
        "| 0.013 | 0.250 | 0.026 | 0.750 |"
    )
    assert "over the family of all 3 comparisons" in text


# A hand-made table: a nearest random with every statistic, a zero-spread row against no pretraining (t p-values
# NaN) and one seed of a second downstream run against the shuffled control.
NAN = math.nan
TABLE = pd.DataFrame(
    [
        [GT, NEAREST, RAND, "linear_probe", "auroc", 0.46, 0.6, 3, 0.1, 0.02, 0.0512, 0.1488, 0.013072, 0.25]
        + [False, 0.026144, 0.75],
        [SHUF, NONE, "none", "linear_probe", "auroc", 0.465, 0.0, 3, -0.2, 0.0, -0.2, -0.2, NAN, 0.25, True, NAN, 0.75],
        [GT, SHUFFLED, SHUF, "finetune", "accuracy", 0.46, 0.465, 1, 0.03, NAN, NAN, NAN, NAN, 1.0, False, NAN, 1.0],
    ],
    columns=[
        *("arm", "versus", "reference", "downstream", "metric", "arm_ratio", "reference_ratio", "n_seeds"),
        *("difference", "sd", "ci_low", "ci_high", "p_value", "p_sign_flip", "zero_spread", "p_value_holm"),
        "p_sign_flip_holm",
    ],
)

HEADER = (
    "| arm | compared with | reference arm | realised ratios | downstream metric | seeds "
    "| difference [95% CI, paired t over seeds] | p (t) | p (sign-flip, exact) | Holm p (t) | Holm p (sign-flip) |"
)
ROWS = [
    f"| {GT} | nearest random (not matched: over one grid cell away) | {RAND} | 0.460 vs 0.600 | linear_probe auroc "
    "| 3 | +0.100 [+0.051, +0.149] | 0.013 | 0.250 | 0.026 | 0.750 |",
    f"| {SHUF} | no pretraining | none | 0.465 vs - | linear_probe auroc | 3 "
    "| -0.200 ZERO SPREAD: every seed gives this difference; no t-interval | - | 0.250 | - | 0.750 |",
    f"| {GT} | shuffled ROIs | {SHUF} | 0.460 vs 0.465 | finetune accuracy | 1 | +0.030 n/a (one seed) "
    "| - | 1.000 | - | 1.000 |",
]
# The legend states the method; its figures: the 95% level, the floor 2^(1-3) = 0.25 at the most seeds of a row
# (3, not the one-seed row's 1), the family of 3 comparisons.
LEGEND = (
    "Difference = arm minus reference, per seed (same seed = same downstream randomness), then the mean with its "
    "95% Student-t interval over the seeds both finished (n - 1 degrees of freedom). p (t): Student's two-sided "
    "p; none when every seed gives the same difference (zero spread: t is undefined, and a zero-width interval is "
    "not certainty). p (sign-flip, exact): the share of the 2^n sign patterns of the n per-seed differences whose "
    "mean is at least as far from 0 as the observed one; it needs no normality and cannot go below 2^(1-n) (0.25 "
    "with 3 seeds). Holm: both p-values adjusted (Holm's step-down) over the family of all 3 comparisons in this "
    'table (every arm, reference, downstream run and metric). "Random at the matched ratio": realised ratios '
    "within one grid cell (1/N) of each other; otherwise the random arm is only the nearest one."
)


def test_markdown_table_and_legend_read_back_whole():
    expected = "\n".join([HEADER, "|" + "---|" * 11, *ROWS]) + "\n\n" + LEGEND + "\n"
    assert comparison_markdown(TABLE) == expected


def test_markdown_at_another_level_and_without_rows():
    text = comparison_markdown(TABLE, level=0.9)
    assert text.splitlines()[0] == HEADER.replace("95% CI", "90% CI")
    assert "the mean with its 90% Student-t interval" in text and "95%" not in text
    assert comparison_markdown(TABLE.iloc[:0]) == "_no MWM arm with finished runs to compare yet_\n"
