"""The positive control's statistics: the matched random ratio from hand-made ROIs, and the paired t-interval."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from data.ids import make_item_id
from localize.import_masks import import_masks
from study.comparison import MATCHED, NONE, SHUFFLED, compare
from study.config import ExperimentConfig
from study.matched import GridSetting, calibrate, matched_mask_ratio
from study.paired import paired_differences, t_interval

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
    grid = GridSetting.from_pretrain_config(CONFIGS / "pretrain" / "control_cpu.yaml", {})
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
    table = compare(_runs(values, ratios), config)
    pairs = set(zip(table.arm, table.versus, table.reference, strict=True))
    assert pairs == {
        ("mwm-gt-0.8-0.4", MATCHED, "random-matched-mwm-gt-0.8-0.4"),
        ("mwm-gt-0.8-0.4", SHUFFLED, "mwm-shuffled-0.8-0.4"),
        ("mwm-gt-0.8-0.4", NONE, "none"),
        ("mwm-shuffled-0.8-0.4", MATCHED, "random-matched-mwm-gt-0.8-0.4"),  # the nearest realised ratio
        ("mwm-shuffled-0.8-0.4", NONE, "none"),
    }
    row = table[(table.arm == "mwm-gt-0.8-0.4") & (table.versus == MATCHED)].iloc[0]
    se = 0.03 / math.sqrt(3)  # differences 0.05, 0.08, 0.02
    assert row.difference == pytest.approx(0.05) and row.ci_low == pytest.approx(0.05 - T_975_DF2 * se)
    assert (row.arm_ratio, row.reference_ratio, row.n_seeds) == (0.464, 0.472, 3)
