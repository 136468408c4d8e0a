"""bench/maskedclip_step.py runs at toy size, prints one JSON object, and its baseline is the same E and D_I."""

from __future__ import annotations

import pytest

from bench.maskedclip_step import breakdown
from tests.test_bench import run_bench


def test_maskedclip_step_bench_runs_against_the_same_mae():
    result = run_bench("maskedclip_step.py", "--dry-run", "--threads", "1", "--batch", "4", "--breakdown")
    assert result["baseline_same_mim_loss"] is True
    assert result["config"]["size"] == "tiny" and result["config"]["paired_images"] == 2
    assert result["step_ratio_vs_mim"] > 0 and result["step_s_median"] > 0  # timings mean nothing here
    assert 0 < result["text_tower_share"] < 1 and 0 < result["teacher_pass_share"] < 1
    assert 0 < result["clip_image_share"] < 1 and 0 < result["feature_decoder_share"] < 1
    assert result["objective_passes_ratio"] > 1  # the MAE step plus passes that take time
    # the same forward + backward plus the CLIP, text, teacher and D_F passes: more FLOPs, counted exactly
    assert result["step_flop_ratio_vs_mim"] > 1 and result["mim_gflop"] > 0
    assert result["step_flop_ratio_vs_mim"] == pytest.approx(result["step_gflop"] / result["mim_gflop"], rel=1e-2)


def test_breakdown_adds_the_objectives_passes_to_the_mae_step():
    # MAE step 1 s, the four extra passes 0.5 + 0.25 + 0.125 + 0.125 = 1 s: MAE + passes = 2x the MAE step
    median = {"step": 3.0, "mim": 1.0, "clip_image": 0.5, "text": 0.25, "teacher": 0.125, "feature_decoder": 0.125}
    result = breakdown(median)
    assert result["objective_passes_ratio"] == pytest.approx(2.0)
    assert result["clip_image_share"] == pytest.approx(0.5 / 3, abs=1e-4)
    assert result["feature_decoder_share"] == pytest.approx(0.125 / 3, abs=1e-4)
