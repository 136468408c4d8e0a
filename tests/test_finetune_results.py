"""The results JSON format: written once per run, never overwritten, read back and collected."""

from __future__ import annotations

import json

import pytest

from finetune.results import RunResult, collect_results, read_results, write_results


def _result(**overrides) -> RunResult:
    fields = dict(
        task="classify",
        backbone="resnet50",
        init="pretrained",
        train_fraction=0.1,
        seed=3,
        metrics={"accuracy": 0.75, "auroc": float("nan")},
        n_train=12,
        n_test=40,
        config={"model": {"backbone": "resnet50"}},
        init_source="/x/backbone.pt",
        init_sha256="ab" * 8,
    )
    fields.update(overrides)
    return RunResult(**fields)


def test_write_read_collect(tmp_path):
    first = write_results(_result(), tmp_path)
    second = write_results(_result(), tmp_path)  # same second, same settings: a new file, not an overwrite
    assert first != second and first.name.startswith("classify-resnet50-pretrained-f0.1-s3-")
    payload = json.loads(first.read_text())
    assert payload["metrics"] == {"accuracy": 0.75, "auroc": None}  # non-finite -> null, valid JSON
    assert payload["schema_version"] == 1 and payload["code_version"]
    assert read_results(first).n_train == 12
    runs = collect_results(tmp_path)
    assert len(runs) == 2 and all(r.task == "classify" for r in runs)


def test_invalid_results_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="task"):
        _result(task="regress")
    with pytest.raises(ValueError, match="train_fraction"):
        _result(train_fraction=0.0)
    bad = tmp_path / "x.json"
    bad.write_text('{"task": "classify"}')
    with pytest.raises(ValueError, match="x.json: not a finetune results file"):
        read_results(bad)
