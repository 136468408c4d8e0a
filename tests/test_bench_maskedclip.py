"""bench/maskedclip_step.py runs at toy size, prints one JSON object, and its baseline is the same E and D_I."""

from __future__ import annotations

from tests.test_bench import run_bench


def test_maskedclip_step_bench_runs_against_the_same_mae():
    result = run_bench("maskedclip_step.py", "--dry-run", "--threads", "1", "--batch", "4")
    assert result["baseline_same_mim_loss"] is True
    assert result["config"]["size"] == "tiny" and result["config"]["paired_images"] == 2
    assert result["step_ratio_vs_mim"] > 0 and result["step_s_median"] > 0  # timings mean nothing here
    assert 0 < result["text_tower_share"] < 1 and 0 < result["teacher_pass_share"] < 1
