"""End to end: every task trains a few steps on the sample corpus through its CLI config and writes one results JSON."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import timm
import torch

from data.sample import write_sample_corpus
from finetune.__main__ import main
from finetune.classify import ClassificationData, ClassificationModule
from finetune.cli import FinetuneCLI
from finetune.results import read_results

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "finetune"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
RESULT_FIELDS = {
    "task",
    "backbone",
    "init",
    "train_fraction",
    "seed",
    "metrics",
    "n_train",
    "n_test",
    "config",
    "timestamp",
    "code_version",
    "schema_version",
    "init_source",
    "init_sha256",
    "subset_seed",
    "details",
}


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    """LightningCLI warns when it gets args while sys.argv holds pytest's own arguments."""
    monkeypatch.setattr(sys, "argv", ["python -m finetune"])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_sample_corpus(root, n=6, seed=0, size=64)
    return root


@pytest.fixture(scope="module")
def backbone_pt(tmp_path_factory):
    """An exported resnet18 backbone: timm state dict without the classifier, non-default values."""
    torch.manual_seed(0)
    model = timm.create_model("resnet18")
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():  # positive running variances, small random weights
                value = torch.rand_like(tensor) + 0.5 if "running_var" in name else torch.randn_like(tensor) * 0.05
                tensor.copy_(value)
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    path = tmp_path_factory.mktemp("export") / "backbone.pt"
    torch.save(sd, path)
    return path, sd


def _run(task: str, config: str, corpus: Path, out: Path, *extra: str) -> dict:
    args = [
        task,
        "fit",
        "--config",
        str(CONFIGS / config),
        "--data.root",
        str(corpus),
        "--results_dir",
        str(out / "results"),
        "--trainer.default_root_dir",
        str(out / "run"),
        *QUIET,
        *extra,
    ]
    assert main(args) == 0
    written = sorted((out / "results").glob("*.json"))
    assert len(written) == 1, written  # one results JSON per run
    read_results(written[0])  # the documented format reads back
    return json.loads(written[0].read_text())


def test_classify_fit_writes_results_and_confusion_matrix(corpus, tmp_path):
    result = _run("classify", "classify_tiny.yaml", corpus, tmp_path, "--trainer.max_epochs", "1")
    assert RESULT_FIELDS <= set(result)
    assert result["task"] == "classify" and result["backbone"] == "resnet18" and result["init"] == "scratch"
    per_image = {"accuracy", "auroc", "auprc", "f1"}
    assert set(result["metrics"]) == per_image | {f"series_{m}" for m in per_image}
    assert all(v is None or 0 <= v <= 1 for v in result["metrics"].values())
    labels = pd.read_csv(corpus / "labels.csv")
    assert result["n_train"] == (labels["split"] == "train").sum()
    assert result["n_test"] == (labels["split"] == "test").sum()
    # no series key in the sample's labels: a file is a series (a NIfTI volume's slices are averaged together)
    assert result["details"]["n_test_series"] == labels.loc[labels["split"] == "test", "path"].nunique()
    files = labels.groupby("split")["path"].nunique().to_dict()  # each file its own patient
    assert {s: c["patients"] for s, c in result["details"]["splits"].items()} == files
    assert result["details"]["splits"]["test"]["items"] == result["n_test"]
    assert result["seed"] == 0 and result["config"]["model"]["backbone"] == "resnet18"
    matrix = result["details"]["confusion_matrix"]
    assert sum(map(sum, matrix)) == result["n_test"]
    assert Path(result["details"]["artifacts"]["confusion_matrix_png"]).stat().st_size > 1000


def test_linear_probe_from_exported_backbone_keeps_backbone_frozen(corpus, tmp_path, backbone_pt):
    path, sd = backbone_pt
    cli = FinetuneCLI(
        ClassificationModule,
        ClassificationData,
        run=False,
        args=[
            "--config",
            str(CONFIGS / "classify_tiny.yaml"),
            "--data.root",
            str(corpus),
            "--data.modalities",
            "[XR]",
            "--model.init",
            str(path),
            "--model.mode",
            "linear_probe",
            "--model.lr",
            "0.05",
            "--train-fraction",
            "0.5",
            "--results_dir",
            str(tmp_path / "results"),
            "--trainer.default_root_dir",
            str(tmp_path / "run"),
            *QUIET,
        ],
    )
    model = cli.model
    head_before = model.head[1].weight.detach().clone()
    assert torch.equal(model.model.layer2[0].conv1.weight, sd["layer2.0.conv1.weight"])  # loaded
    cli.trainer.fit(model, datamodule=cli.datamodule)
    after = model.model.state_dict()
    for key in ("conv1.weight", "bn1.running_mean", "layer4.1.bn2.running_var", "layer4.1.bn2.num_batches_tracked"):
        assert torch.equal(after[key], sd[key]), key  # frozen weights, BatchNorm statistics not updated
    assert not torch.equal(model.head[1].weight, head_before)  # the head did train
    assert int(model.head[0].num_batches_tracked) > 0  # the probe's own BatchNorm runs in training mode
    # whole files per split: 3 X-rays per class -> 1 test, 2 train; half of them, one image per class
    assert cli.datamodule.n_train == 2

    cli.after_fit()
    result = read_results(cli.last_results_path)
    # the results JSON names the backbone relative to the working directory (no absolute path in outputs)
    assert result.init == "pretrained" and result.init_source == os.path.relpath(path) and len(result.init_sha256) == 16
    assert result.train_fraction == 0.5 and result.details["mode"] == "linear_probe"
    assert result.details["load_report"]["n_loaded"] == len(sd) and result.details["class_names"] == [
        "normal",
        "opacity",
    ]


def test_segment_fit_writes_dice_and_iou(corpus, tmp_path):
    result = _run(
        "segment", "segment_tiny.yaml", corpus, tmp_path, "--trainer.max_epochs", "1", "--data.modalities", "[XR]"
    )
    assert result["task"] == "segment" and set(result["metrics"]) == {"dice", "dice_pooled", "iou", "iou_pooled"}
    assert all(0 <= v <= 1 for v in result["metrics"].values())
    assert result["n_test"] == 2


def test_detect_fit_on_sample_coco_from_exported_backbone(corpus, tmp_path, backbone_pt):
    path, _ = backbone_pt
    result = _run(
        "detect",
        "detect_tiny.yaml",
        corpus,
        tmp_path,
        "--data.modalities",
        "[XR]",
        "--model.init",
        str(path),
        "--trainer.limit_train_batches",
        "2",
    )
    assert result["task"] == "detect" and result["init"] == "pretrained"
    assert set(result["metrics"]) == {f"{t}_ap{s}" for t in ("box", "mask") for s in ("", "50", "75")}
    assert all(v is None or 0 <= v <= 1 for v in result["metrics"].values())
    assert result["n_test"] == 2 and result["details"]["category_ids"] == [1, 2, 3]
    assert result["details"]["load_report"]["n_missing"] == 0
