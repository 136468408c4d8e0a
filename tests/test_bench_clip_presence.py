"""bench/clip_presence.py: the AUROCs it prints are the hand-counted ones, within-series is not the pooled figure,
and the command runs on a volumes corpus (untrained stand-ins: only the plumbing, not a figure)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("clip_presence_bench", REPO / "bench" / "clip_presence.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_auroc_counts_positive_over_negative_pairs_ties_half():
    auroc = _bench().auroc
    # pairs (pos, neg): (0.9, 0.5) yes, (0.9, 0.1) yes, (0.2, 0.5) no, (0.2, 0.1) yes -> 3 / 4
    assert auroc(np.array([1, 1, 0, 0]), np.array([0.9, 0.2, 0.5, 0.1])) == pytest.approx(0.75)
    assert auroc(np.array([1, 0]), np.array([0.3, 0.3])) == pytest.approx(0.5)  # a tie counts one half
    assert auroc(np.array([0, 1]), np.array([0.3, 0.7])) == pytest.approx(1.0)
    assert auroc(np.array([1, 1]), np.array([0.3, 0.7])) is None  # one class only


def test_within_series_is_the_mean_over_series_with_both_classes_not_the_pooled_auroc():
    within = _bench().within_series_auroc
    # A and B each rank their positive first (1.0 each); pooled, B's positive (0.3) falls below A's negative (0.8):
    # 3 of 4 pairs -> 0.75. C (one slice, negative) has one class and is left out.
    positive = np.array([True, False, True, False, False])
    score = np.array([0.9, 0.8, 0.3, 0.2, 0.95])
    series = ["A", "A", "B", "B", "C"]
    assert _bench().auroc(positive[:4], score[:4]) == pytest.approx(0.75)
    value, n = within(positive, score, series)
    assert n == 2 and value == pytest.approx(1.0)
    # reversing B's order: A 1.0, B 0.0 -> 0.5
    value, n = within(positive, np.array([0.9, 0.8, 0.2, 0.3, 0.95]), series)
    assert n == 2 and value == pytest.approx(0.5)


def test_the_command_prints_the_presence_aurocs_of_a_volumes_corpus(tmp_path, capsys):
    from data.sample import write_sample_corpus
    from localize.standins import write_standins

    corpus = tmp_path / "volumes"
    write_sample_corpus(corpus, 12, 0, size=48, mode="volumes")
    config = write_standins(tmp_path / "standins")
    args = ["--corpus", str(corpus), "--config", str(config), "--zeroshot", "configs/zeroshot/sample.yaml"]
    _bench().main(args)  # in-process: the subprocess's own torch import would double the test's time
    out = json.loads(capsys.readouterr().out)
    # one MR volume of 12 slices, the tumour on the middle 6 (data.sample.volumes.target_positions)
    assert (out["items"], out["positives"], out["series_with_both"]) == (12, 6, 1)
    for key in ("presence_auroc", "within_series_auroc", "zeroshot_auroc"):
        assert 0.0 <= out[key] <= 1.0
    # a single series: the within-series figure is that series' own, the pooled one
    assert out["within_series_auroc"] == pytest.approx(out["presence_auroc"])
    # a missing truth mask: exit 2 with one line naming the file
    mr_item = next(line.split(",")[0] for line in (corpus / "labels.csv").read_text().splitlines() if ",MR," in line)
    missing = corpus / "truth" / f"{mr_item}.png"
    missing.unlink()
    with pytest.raises(SystemExit) as stop:
        _bench().main(args)
    assert stop.value.code == 2 and str(missing) in capsys.readouterr().err
