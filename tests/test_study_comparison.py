"""The positive control's statistics: the matched random ratio from hand-made ROIs, the paired t-interval, the
exact sign-flip p-value, Holm's adjustment, the zero-spread flag and the matched / nearest random label."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from data.ids import make_item_id
from localize.import_masks import import_masks
from study.ci_plot import arm_intervals, interval_figure
from study.comparison import MATCHED, NEAREST, NONE, SHUFFLED, compare, comparison_markdown, grid_cells
from study.config import ExperimentConfig
from study.layout import StudyLayout, write_done
from study.matched import GridSetting, calibrate, matched_mask_ratio
from study.paired import holm, paired_differences, sign_flip_p, t_interval

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
T_975_DF2 = 4.302652729749464  # Student t, 97.5% quantile, 2 degrees of freedom (tables: 4.303)

# Three 96 x 96 ROIs on the 6 x 6 grid of 16 px cells; the nearest rule reads pixel (16 i, 16 j) of each cell,
# and a flipped image reads column 95 - 16 j.
#   A: rows 0-15, columns 20-95: row 0; columns 32..80 -> 4 cells; flipped: columns 95..31 -> 5 cells
#   B: rows 28-75, columns 8-90: rows 32, 48, 64; columns 16..80 (flipped 79..15) -> 15 cells either way
#   C: empty
RECTS = {"a": (0, 16, 20, 96), "b": (28, 76, 8, 91), "c": None}  # rows [r0, r1), columns [c0, c1)


@pytest.fixture(scope="module")
def hand_made_cache(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("matched")
    corpus, masks = root / "corpus", root / "masks"
    (corpus / "img").mkdir(parents=True)
    masks.mkdir()
    for name, rect in RECTS.items():
        cv2.imwrite(str(corpus / "img" / f"{name}.png"), np.full((96, 96), 100, np.uint8))
        mask = np.zeros((96, 96), np.uint8)
        if rect is not None:
            mask[rect[0] : rect[1], rect[2] : rect[3]] = 255
        cv2.imwrite(str(masks / f"{make_item_id(f'img/{name}.png', 0)}.png"), mask)
    cache = root / "gt.zarr"
    assert import_masks(masks, cache, corpus=corpus, progress=False).failed == 0
    return corpus, cache


def test_matched_ratio_is_the_realised_one_on_hand_made_rois(hand_made_cache):
    corpus, cache = hand_made_cache
    # the hand counts below are for the 96 px, 6 x 6 grid of the control's first design (resnet10_narrow_os16)
    before_26 = {"model.backbone": "resnet10_narrow_os16", "model.input_size": 96}
    grid = GridSetting.from_pretrain_config(CONFIGS / "pretrain" / "control_cpu.yaml", before_26)
    assert (grid.input_size, grid.grid_hw, grid.roi_shape, grid.hflip) == (96, (6, 6), "rect", 0.5)
    arms = ExperimentConfig.load(CONFIGS / "experiment" / "positive_control.yaml").arms
    target = next(arm for arm in arms if arm.name == "mwm-gt-0.8-0.4")
    assert (target.name, target.r_roi, target.r_bg) == ("mwm-gt-0.8-0.4", 0.8, 0.4)
    record = calibrate(corpus, cache, target, grid)
    # MWM keeps int(n (1 - r)) cells per region, in floats (1 - 0.8 = 0.19999999999999996):
    #   A unflipped: 4 ROI keep 0, 32 bg keep int(19.2) = 19 -> 17 masked; flipped: 5 ROI keep int(0.99..) = 0,
    #     31 bg keep int(18.6) = 18 -> 18 masked; B: 15 ROI keep int(2.99..) = 2, 21 bg keep 12 -> 22 masked;
    #   C: 36 bg keep int(21.59..) = 21 -> 15 masked. Mean over images (flip p = 0.5): (17.5 + 22 + 15) / 108.
    assert record["target_realised_ratio"] == pytest.approx(54.5 / 108, abs=1e-12)
    # random masking keeps round(36 x (1 - 0.50463)) = round(17.83) = 18 cells: ratio 18 / 36
    assert record["mask_ratio"] == pytest.approx(0.5, abs=1e-12)
    assert record["items"] == 3 and record["grid"] == [6, 6]
    # the nominal-based ratio would differ: 0.4 + 0.4 x ROI share (19.5 / 108) keeps round(19.0) = 19 cells
    assert matched_mask_ratio(0.4 + 0.4 * 19.5 / 108, 36) == pytest.approx(17 / 36)


def test_matched_mask_ratio_picks_the_nearest_multiple_of_one_cell():
    assert matched_mask_ratio(0.4638, 36) == pytest.approx(17 / 36)  # keep round(19.30) = 19
    assert matched_mask_ratio(0.45, 36) == pytest.approx(16 / 36)  # keep round(19.8) = 20, not 19
    assert matched_mask_ratio(0.75, 49) == pytest.approx(37 / 49)  # keep round(12.25) = 12
    assert matched_mask_ratio(0.0, 9) == 0.0 and matched_mask_ratio(1.0, 9) == 1.0
    with pytest.raises(ValueError):
        matched_mask_ratio(1.2, 36)


def test_paired_t_interval_against_a_hand_computation():
    # differences 0.05, 0.08, 0.02: mean 0.05, sd 0.03, se 0.03 / sqrt(3)
    ci = t_interval([0.05, 0.08, 0.02])
    se = 0.03 / math.sqrt(3)
    assert (ci.mean, ci.sd, ci.n) == (pytest.approx(0.05), pytest.approx(0.03), 3)
    assert ci.low == pytest.approx(0.05 - T_975_DF2 * se) and ci.high == pytest.approx(0.05 + T_975_DF2 * se)
    # two-sided p with 2 df in closed form: 1 - t / sqrt(2 + t^2), t = mean / se
    t = 0.05 / se
    assert ci.p_value == pytest.approx(1 - t / math.sqrt(2 + t * t))
    one = t_interval([0.1])
    assert one.mean == 0.1 and math.isnan(one.low) and math.isnan(one.p_value)


def _runs(values: dict[str, dict[int, float]], ratios: dict[str, float]) -> pd.DataFrame:
    rows = [
        {"arm": arm, "seed": seed, "downstream": "linear_probe", "metric": "accuracy", "value": v}
        | {"realised_ratio": ratios[arm]}
        for arm, by_seed in values.items()
        for seed, v in by_seed.items()
    ]
    return pd.DataFrame(rows)


def test_differences_are_paired_by_seed_not_by_position():
    runs = _runs(
        {"mwm": {2: 0.67, 0: 0.70, 1: 0.74}, "ref": {0: 0.65, 1: 0.66, 2: 0.69, 3: 0.9}},
        {"mwm": 0.46, "ref": 0.47},
    )
    diffs = paired_differences(runs, "mwm", "ref", "linear_probe", "accuracy")
    assert diffs.index.tolist() == [0, 1, 2] and diffs.to_numpy() == pytest.approx([0.05, 0.08, -0.02])


def test_each_mwm_arm_is_compared_with_its_matched_random_its_shuffled_control_and_no_pretraining():
    config = ExperimentConfig.load(CONFIGS / "experiment" / "positive_control.yaml")
    values = {
        "none": {0: 0.40, 1: 0.42, 2: 0.41},
        "random-0.6": {0: 0.60, 1: 0.62, 2: 0.61},
        "random-matched-mwm-gt-0.8-0.4": {0: 0.65, 1: 0.66, 2: 0.67},
        "mwm-gt-0.8-0.4": {0: 0.70, 1: 0.74, 2: 0.69},
        "mwm-shuffled-0.8-0.4": {0: 0.64, 1: 0.66, 2: 0.65},
    }
    ratios = {"none": 0.0, "random-0.6": 0.61, "random-matched-mwm-gt-0.8-0.4": 0.472}
    ratios |= {"mwm-gt-0.8-0.4": 0.464, "mwm-shuffled-0.8-0.4": 0.465}
    table = compare(_runs(values, ratios), config, n_cells=36)
    pairs = set(zip(table.arm, table.versus, table.reference, strict=True))
    assert pairs == {
        ("mwm-gt-0.8-0.4", MATCHED, "random-matched-mwm-gt-0.8-0.4"),
        ("mwm-gt-0.8-0.4", SHUFFLED, "mwm-shuffled-0.8-0.4"),
        ("mwm-gt-0.8-0.4", NONE, "none"),
        ("mwm-shuffled-0.8-0.4", MATCHED, "random-matched-mwm-gt-0.8-0.4"),  # nearest, 0.007 < 1/36 away
        ("mwm-shuffled-0.8-0.4", NONE, "none"),
        ("random-0.6", NONE, "none"),  # random arms against no pretraining: does pretraining learn at all?
        ("random-matched-mwm-gt-0.8-0.4", NONE, "none"),
    }
    row = table[(table.arm == "mwm-gt-0.8-0.4") & (table.versus == MATCHED)].iloc[0]
    se = 0.03 / math.sqrt(3)  # differences 0.05, 0.08, 0.02
    assert row.difference == pytest.approx(0.05) and row.ci_low == pytest.approx(0.05 - T_975_DF2 * se)
    assert (row.arm_ratio, row.reference_ratio, row.n_seeds) == (0.464, 0.472, 3)

    # sign-flip p by hand: (0.05, 0.08, 0.02) sums to 0.15, and only the all-plus and all-minus patterns of 8
    # reach |0.15|; shuffled - matched = (-0.01, 0.00, -0.02): |sum| >= 0.03 needs the two non-zeros alike, 4 of 8
    assert row.p_sign_flip == pytest.approx(0.25) and not row.zero_spread
    shuffled = table[(table.arm == "mwm-shuffled-0.8-0.4") & (table.versus == MATCHED)].iloc[0]
    assert shuffled.p_sign_flip == pytest.approx(0.5)
    # shuffled - none is 0.24 at every seed (up to rounding): flagged, no t p-value, sign-flip p = 2^(1-3)
    flat = table[(table.arm == "mwm-shuffled-0.8-0.4") & (table.versus == NONE)].iloc[0]
    assert flat.zero_spread and math.isnan(flat.p_value) and flat.p_sign_flip == pytest.approx(0.25)
    random = table[(table.arm == "random-0.6") & (table.versus == NONE)].iloc[0]
    assert random.zero_spread and random.difference == pytest.approx(0.20)  # 0.20 at every seed
    # Holm over the 7 rows: the smallest sign-flip p, 0.25, times 7 already exceeds 1
    assert table.p_sign_flip_holm.tolist() == pytest.approx([1.0] * 7)
    markdown = comparison_markdown(table)
    assert "ZERO SPREAD" in markdown and "all 7 comparisons" in markdown and "2^(1-n) (0.25 with 3 seeds)" in markdown


def test_sign_flip_p_against_enumeration_by_hand():
    assert sign_flip_p([0.05, 0.08, 0.02]) == pytest.approx(2 / 8)  # only +++ and --- reach |0.15|
    # (0.05, 0.08, -0.02): signed sums 0.11, 0.15, -0.05, -0.01 and their negatives; |sum| >= 0.11: 4 of 8
    assert sign_flip_p([0.05, 0.08, -0.02]) == pytest.approx(4 / 8)
    # (1, 2, 3, 4, -0.5), sum 9.5: flipping a subset of sum x gives 9.5 - 2x, as far as 9.5 when x <= 0 ({}, {-0.5})
    # or x >= 9.5 ({1, 2, 3, 4}, all five): 4 of 32
    assert sign_flip_p([1, 2, 3, 4, -0.5]) == pytest.approx(4 / 32)
    # every seed equal: the smallest p there is, 2^(1-n), also when rounding makes the equal values differ
    assert sign_flip_p([0.1] * 4) == pytest.approx(2**-3)
    assert sign_flip_p([0.7 - 0.6, 0.8 - 0.7, 0.9 - 0.8]) == pytest.approx(2**-2)
    assert sign_flip_p([0.0, 0.0, 0.0]) == 1.0 and math.isnan(sign_flip_p([]))
    assert sign_flip_p([0.3]) == 1.0  # one seed: both signs reach |0.3|
    many = sign_flip_p([0.1] * 18)  # past exact enumeration: random patterns, never 0
    assert 0 < many < 1e-4


def test_holm_on_a_textbook_example():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = holm([0.01, math.nan, 0.04])  # NaN is not in the family: m = 2
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.04)
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # 0.5 x 2 = 1, then capped
    assert holm([]).size == 0


def test_zero_spread_is_flagged_not_read_as_certainty():
    ci = t_interval([0.7 - 0.6, 0.8 - 0.7, 0.9 - 0.8])  # equal up to rounding
    assert ci.zero_spread and ci.sd == 0.0 and math.isnan(ci.p_value) and ci.low == ci.high == pytest.approx(0.1)
    assert not t_interval([0.1, 0.1, 0.1001]).zero_spread


def test_a_random_arm_over_one_grid_cell_away_is_only_the_nearest():
    config = ExperimentConfig.load(CONFIGS / "experiment" / "positive_control.yaml")
    values = {"random-0.6": {0: 0.6, 1: 0.62}, "mwm-gt-0.8-0.4": {0: 0.7, 1: 0.74}}
    gap = {"random-0.6": 0.611, "mwm-gt-0.8-0.4": 0.464}  # 0.147 apart
    assert set(compare(_runs(values, gap), config, n_cells=36).versus) == {NEAREST}
    assert set(compare(_runs(values, gap), config, n_cells=4).versus) == {MATCHED}  # 1/4 = one cell covers it
    assert set(compare(_runs(values, gap), config).versus) == {NEAREST}  # no grid, no calibration: nearest
    # the calibrated arm too, when its realised ratio ended up two cells of 1/36 away
    values = {"random-matched-mwm-gt-0.8-0.4": {0: 0.6, 1: 0.62}, "mwm-gt-0.8-0.4": {0: 0.7, 1: 0.74}}
    drift = {"random-matched-mwm-gt-0.8-0.4": 0.464 + 2 / 36, "mwm-gt-0.8-0.4": 0.464}
    assert set(compare(_runs(values, drift), config, n_cells=36).versus) == {NEAREST}
    assert set(compare(_runs(values, drift), config).versus) == {MATCHED}  # no grid: the calibration vouches


def test_grid_cells_come_from_the_calibration_record(tmp_path):
    config = ExperimentConfig.load(CONFIGS / "experiment" / "positive_control.yaml")
    layout = StudyLayout(tmp_path)
    layout.calibration_dir("random-matched-mwm-gt-0.8-0.4").mkdir(parents=True)
    write_done(layout.calibration_dir("random-matched-mwm-gt-0.8-0.4"), {"grid": [5, 7]})
    assert grid_cells(config, layout) == 35


def test_the_interval_plot_says_its_intervals_are_per_arm():
    runs = _runs({"none": {0: 0.4, 1: 0.5}, "mwm": {0: 0.6, 1: 0.7}}, {"none": 0.0, "mwm": 0.46})
    runs["line"], runs["strategy"] = runs.arm, ["none", "none", "differentiated", "differentiated"]
    points = arm_intervals(runs, "linear_probe", "accuracy")
    title = interval_figure(points, "accuracy", "t").axes[0].get_title()
    assert "per arm (unpaired)" in title and "comparison.md" in title
