"""`python -m study`: the grid, the runner (resumable) and its table + plot."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pretrain.cli import main as pretrain_main
from study.runner import ExperimentConfig, ExperimentError, ExperimentRunner
from study.runner import main as study_main

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "experiment"


def test_grid_expands_arms_and_checks_sources():
    config = ExperimentConfig.load(CONFIGS / "cpu_sample.yaml")
    names = [arm.name for arm in config.arms]
    assert names == [
        "none",
        "random-0.4",
        "random-0.6",
        "random-0.7",
        "mwm-gt-0.8-0.4",
        "mwm-gt-0.6-0.2",
        "mwm-shuffled-0.8-0.4",
    ]
    assert {arm.line for arm in config.arms} == {"none", "random", "differentiated (gt)", "differentiated (shuffled)"}
    assert config.arms[1].pretrain_args() == ["--model.masking", "random", "--model.mask_ratio", "0.4"]
    for name in ("gpu_paper.yaml", "toy.yaml"):
        assert ExperimentConfig.load(CONFIGS / name).arms
    raw = {
        "out": "o",
        "corpus": "c",
        "pretrain": {"config": "p"},
        "downstream": [],
        "rois": {"gt": {"kind": "import", "masks": "truth"}},
        "arms": [{"strategy": "differentiated", "rois": "nope", "r_roi": 0.8, "r_bg": 0.4}],
    }
    with pytest.raises(ValueError, match="nope"):
        ExperimentConfig.from_dict(raw)
    raw["arms"], raw["rois"]["gt"]["kind"] = [], "magic"
    with pytest.raises(ValueError, match="kind must be one of"):
        ExperimentConfig.from_dict(raw)
    with pytest.raises(ExperimentError, match="missing key 'out'"):
        path = CONFIGS.parent / "pretrain" / "tiny_cpu.yaml"  # a YAML that is not an experiment config
        ExperimentConfig.load(path)


def test_toy_study_writes_table_and_plot_and_resumes(tmp_path, capsys):
    config = ExperimentConfig.load(CONFIGS / "toy.yaml", {"out": tmp_path / "out", "corpus": tmp_path / "corpus"})
    first = ExperimentRunner(config).run()
    assert first.failed == [] and first.skipped == 0
    assert first.launched == 5  # gt ROI import, 2 pretraining runs, 2 linear probes

    out = tmp_path / "out"
    table = pd.read_csv(out / "results.csv")
    assert set(table.arm) == {"random-0.6", "mwm-gt-0.8-0.4"}
    accuracy = table[(table.downstream == "linear_probe") & (table.metric == "accuracy")].set_index("arm")
    assert accuracy["mean"].between(0, 1).all() and (accuracy.n_seeds == 1).all()
    assert accuracy.realised_ratio.between(0.25, 1).all()  # averaged mask/realised_ratio of the run
    markdown = (out / "results.md").read_text()
    assert "| random-0.6 | random |" in markdown and "| mwm-gt-0.8-0.4 | differentiated | gt | 0.8 / 0.4 |" in markdown
    plot = out / "linear_probe_accuracy_vs_mask_ratio.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000
    pretrain_done = json.loads((out / "runs" / "mwm-gt-0.8-0.4" / "s0" / "pretrain" / "done.json").read_text())
    assert Path(pretrain_done["backbone"]).is_file() and pretrain_done["steps"] == 2

    done_files = sorted(out.rglob("done.json"))
    mtimes = {p: p.stat().st_mtime_ns for p in done_files}
    results = sorted(out.rglob("results/*.json"))
    capsys.readouterr()
    # the second invocation, through the command line: nothing is run again, the report is rewritten
    assert (
        study_main(
            [
                "--config",
                str(CONFIGS / "toy.yaml"),
                "--out",
                str(out),
                "--corpus",
                str(tmp_path / "corpus"),
            ]
        )
        == 0
    )
    assert "launched 0 runs, 5 already finished" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in sorted(out.rglob("done.json"))} == mtimes
    assert sorted(out.rglob("results/*.json")) == results
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), table)


def test_pretrain_experiment_says_where_the_study_went(capsys):
    assert pretrain_main(["experiment", "--config", str(CONFIGS / "toy.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "python -m study" in err[0]
