"""`python -m study`: the grid, the runner (resumable) and its table + plot."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from finetune.results import RunResult, write_results
from pretrain.cli import main as pretrain_main
from study.cli import main as study_main
from study.config import ExperimentConfig, ExperimentError
from study.layout import StudyLayout, write_done
from study.matched import matched_mask_ratio
from study.report import write_report
from study.runner import ExperimentRunner

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
    differentiated = ["--model.masking", "differentiated", "--model.r_roi", "0.8", "--model.r_bg", "0.4"]
    assert config.arms[4].pretrain_args() == differentiated
    assert (config.arms[0].pretrains, config.arms[4].nominal, config.arms[1].roi_label) == (False, "0.8 / 0.4", "-")
    for name in ("gpu_paper.yaml", "toy.yaml", "positive_control_tiny.yaml"):
        assert ExperimentConfig.load(CONFIGS / name).arms
    pilot = ExperimentConfig.load(CONFIGS / "positive_control_pilot.yaml")  # issue 26's pilot: one chain, 2 arms
    assert [arm.name for arm in pilot.arms] == ["random-0.6", "none"] and (pilot.jobs, tuple(pilot.seeds)) == (1, (0,))
    probe = ExperimentConfig.load(CONFIGS / "gpu_paper.yaml").downstream[0]
    assert probe.config == "configs/finetune/probe_r50.yaml" and "model.lr" not in probe.args  # lr from MAE's rule
    control = ExperimentConfig.load(CONFIGS / "positive_control.yaml")
    assert [arm.name for arm in control.arms] == [
        "none",
        "random-0.6",
        "random-matched-mwm-gt-0.8-0.4",
        "random-matched-mwm-small-0.8-0.4",
        "mwm-gt-0.8-0.4",
        "mwm-shuffled-0.8-0.4",
        "mwm-small-0.8-0.4",
    ]
    assert len(control.seeds) >= 3 and control.jobs == 2 and control.env["OMP_NUM_THREADS"] == "1"
    matched = control.arms[2]
    assert (matched.matches, matched.line, matched.strategy) == ("mwm-gt-0.8-0.4", "random", "random")
    with pytest.raises(ValueError, match="calibration"):
        matched.pretrain_args()
    assert matched.with_ratio(17 / 36).pretrain_args()[-1] == str(17 / 36)
    assert control.rois["small"].optional and control.rois["gt"].manifest == "pretrain/manifest.parquet"
    bad = yaml.safe_load((CONFIGS / "positive_control.yaml").read_text())
    bad["arms"][2]["match"] = ["random-0.6"]
    with pytest.raises(ValueError, match="not a differentiated arm"):
        ExperimentConfig.from_dict(bad)
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


def test_tiny_control_study_calibrates_writes_report_and_resumes(tmp_path, capsys):
    """The positive control at test size, end to end: corpus, ROI import, the matched arm's calibration, two
    chains side by side (jobs 2), the report; then a second invocation runs nothing and --report-only."""
    argv = ["--config", str(CONFIGS / "positive_control_tiny.yaml"), "--out", str(tmp_path / "out")]
    argv += ["--corpus", str(tmp_path / "corpus")]
    config = ExperimentConfig.load(argv[1], {"out": tmp_path / "out", "corpus": tmp_path / "corpus"})
    first = ExperimentRunner(config).run()
    assert first.failed == [] and first.skipped == 0
    assert first.launched == 5  # gt ROI import, 2 pretraining runs, 2 linear probes
    assert first.not_applicable == [
        "arm random-matched-mwm-small-0.8-0.4: ROI source small: localize config work/no_such_localize.yaml not found",
        "arm mwm-small-0.8-0.4: ROI source small: localize config work/no_such_localize.yaml not found",
    ]

    out = tmp_path / "out"
    matched, target = "random-matched-mwm-gt-0.8-0.4", "mwm-gt-0.8-0.4"
    calibration = json.loads((out / "runs" / matched / "calibration" / "done.json").read_text())
    assert calibration["target"] == target and calibration["grid"] == [8, 8]
    assert calibration["mask_ratio"] == matched_mask_ratio(calibration["target_realised_ratio"], 64)
    # random masking realises exactly its ratio: the calibrated one reached the pretraining run
    pretrain_dir = out / "runs" / matched / "s0" / "pretrain"
    pretrain_done = json.loads((pretrain_dir / "done.json").read_text())
    assert pretrain_done["realised_ratio"] == pytest.approx(calibration["mask_ratio"], abs=1e-6)
    # paths in a done record: relative to its own folder (no absolute path in outputs)
    assert not Path(pretrain_done["backbone"]).is_absolute() and pretrain_done["steps"] == 2
    assert (pretrain_dir / pretrain_done["backbone"]).is_file()
    assert pretrain_done["cpu_s"] > 1 and first.cpu_s > pretrain_done["cpu_s"]  # the child's own CPU time

    table = pd.read_csv(out / "results.csv")
    assert set(table.arm) == {matched, target}
    accuracy = table[(table.downstream == "linear_probe") & (table.metric == "accuracy")].set_index("arm")
    assert accuracy["mean"].between(0, 1).all() and (accuracy.n_seeds == 1).all()
    assert accuracy.realised_ratio.between(0.25, 1).all()  # averaged mask/realised_ratio of the run
    markdown = (out / "results.md").read_text()
    assert f"| {matched} | random | - | = {target} |" in markdown
    assert f"| {target} | differentiated | gt | 0.8 / 0.4 |" in markdown
    comparison = (out / "comparison.md").read_text()
    assert f"| {target} | random at the matched ratio | {matched} |" in comparison and "n/a (one seed)" in comparison
    for plot in (out / "linear_probe_accuracy_vs_mask_ratio.png", out / "linear_probe_accuracy_ci.png"):
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000

    done_files = sorted(out.rglob("done.json"))
    mtimes = {p: p.stat().st_mtime_ns for p in done_files}
    results = sorted(out.rglob("results/*.json"))
    # each downstream run records its split by patient; a control image is its own patient
    labels = pd.read_csv(tmp_path / "corpus" / "labels.csv")
    for path in results:
        counts = json.loads(path.read_text())["details"]["splits"]
        assert all(c["patients"] == c["items"] for c in counts.values())
        assert counts["test"]["items"] == (labels["split"] == "test").sum()
    capsys.readouterr()
    # the second invocation, through the command line: nothing is run again, the report is rewritten
    assert study_main(argv) == 0
    assert "launched 0 runs, 5 already finished" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in sorted(out.rglob("done.json"))} == mtimes
    assert sorted(out.rglob("results/*.json")) == results
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), table)
    # --report-only: the report again, from the done markers alone
    (out / "results.csv").unlink()
    (out / "comparison.csv").unlink()
    assert study_main([*argv, "--report-only"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), table)
    assert (out / "comparison.csv").is_file()


def test_pretrain_experiment_says_where_the_study_went(capsys):
    assert pretrain_main(["experiment", "--config", str(CONFIGS / "toy.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "python -m study" in err[0]


def test_report_reads_the_layout_and_summarises_over_seeds(tmp_path):
    """A hand-made finished study (done markers where the layout puts them): mean and sample std over seeds."""
    raw = yaml.safe_load((CONFIGS / "toy.yaml").read_text())
    config = ExperimentConfig.from_dict({**raw, "out": tmp_path / "out", "seeds": [0, 1]})
    layout = StudyLayout(config.out)
    accuracy = {("random-0.6", 0): 0.5, ("random-0.6", 1): 0.7, ("mwm-gt-0.8-0.4", 0): 0.9}  # seed 1 unfinished
    realised = {"random-0.6": 0.6, "mwm-gt-0.8-0.4": 0.55}
    for (arm, seed), value in accuracy.items():
        pretrain_dir = layout.pretrain_dir(arm, seed)
        pretrain_dir.mkdir(parents=True)
        write_done(pretrain_dir, {"backbone": "b.pt", "realised_ratio": realised[arm], "expected_ratio": 0.6})
        result = RunResult("classify", "resnet18", "pretrained", 1.0, seed, {"accuracy": value}, 4, 2, {})
        path = write_results(result, layout.results_dir(arm, seed, "linear_probe"))
        write_done(layout.downstream_dir(arm, seed, "linear_probe"), {"results": str(path)})
    layout.pretrain_dir("mwm-gt-0.8-0.4", 1).mkdir(parents=True)  # started, never finished: not counted

    paths = write_report(config)
    table = pd.read_csv(paths["table"]).set_index("arm")
    assert table.loc["random-0.6", "mean"] == pytest.approx(0.6)
    assert table.loc["random-0.6", "std"] == pytest.approx(0.1414214, abs=1e-6)  # sample std of 0.5, 0.7
    assert table.loc["random-0.6", "n_seeds"] == 2 and table.loc["mwm-gt-0.8-0.4", "n_seeds"] == 1
    assert table.loc["mwm-gt-0.8-0.4", "realised_ratio"] == pytest.approx(0.55)
    markdown = paths["markdown"].read_text()
    assert "| random-0.6 | random | - | 0.6 | 0.600 | 2 | 0.600 ± 0.141 |" in markdown
    assert "| mwm-gt-0.8-0.4 | differentiated | gt | 0.8 / 0.4 | 0.550 | 1 | 0.900 |" in markdown
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
