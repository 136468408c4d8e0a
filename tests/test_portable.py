"""No absolute path in a run's records (issue 23, item 6): `data.portable` and the Lightning records built on it.
Expected values are written out by hand: the relative form of a path from a known working directory."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from data.portable import absolute_path, portable, portable_path
from pretrain.portable import PortableModelCheckpoint
from study.layout import done_path, read_done, write_done


def test_portable_path_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert portable_path(tmp_path / "work" / "corpus") == "work/corpus"
    assert portable_path(tmp_path.parent / "data" / "ct") == "../data/ct"  # outside: a relative chain
    assert portable_path("already/relative") == "already/relative"
    assert portable_path(str(tmp_path / "a"), base=tmp_path / "runs") == "../a"
    assert absolute_path("../a", base=tmp_path / "runs") == tmp_path / "runs" / ".." / "a"


def test_portable_walks_nested_values_and_leaves_non_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    value = {
        "data": {"corpus": str(tmp_path / "c"), "roots": [tmp_path / "x", "s3://bucket/key", 3]},
        "prompt": "lungs / chest",
        "pattern": "sub-(?P<patient>[^/]+)/",
        "pair": (str(tmp_path / "y"), None),
    }
    assert portable(value) == {
        "data": {"corpus": "c", "roots": ["x", "s3://bucket/key", 3]},
        "prompt": "lungs / chest",
        "pattern": "sub-(?P<patient>[^/]+)/",
        "pair": ("y", None),
    }


def test_checkpoint_state_is_relative_and_a_resume_restores_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dirpath = tmp_path / "run" / "checkpoints"
    saving = PortableModelCheckpoint(dirpath=dirpath, save_top_k=2, monitor="loss")
    best = str(dirpath.resolve() / "epoch=1.ckpt")
    saving.best_model_path, saving.last_model_path = best, str(dirpath.resolve() / "last.ckpt")
    saving.best_k_models = {best: torch.tensor(0.5)}
    state = saving.state_dict()
    assert state["dirpath"] == "run/checkpoints" and state["best_model_path"] == "run/checkpoints/epoch=1.ckpt"
    assert list(state["best_k_models"]) == ["run/checkpoints/epoch=1.ckpt"]
    assert not any(os.path.isabs(str(v)) for v in state.values() if isinstance(v, str))
    # ModelCheckpoint restores best_k_models only when the recorded dirpath equals its own (absolute) one
    resuming = PortableModelCheckpoint(dirpath=dirpath, save_top_k=2, monitor="loss")
    resuming.load_state_dict(state)
    assert resuming.best_k_models == {best: torch.tensor(0.5)} and resuming.last_model_path.endswith("last.ckpt")
    assert os.path.isabs(resuming.best_model_path)
    # the same key as Lightning's own ModelCheckpoint: older checkpoints resume alike
    assert saving.state_key.startswith("ModelCheckpoint{")


def test_study_done_records_hold_paths_relative_to_their_folder(tmp_path):
    run_dir = tmp_path / "study" / "arm" / "seed_0" / "probe"
    run_dir.mkdir(parents=True)
    results = run_dir / "results" / "r.json"
    write_done(run_dir, {"results": str(results), "metrics": {"accuracy": 0.5}})
    text = (run_dir / "done.json").read_text()
    assert str(tmp_path) not in text and json.loads(text)["results"] == "results/r.json"
    assert done_path(run_dir, read_done(run_dir)["results"]) == run_dir / "results" / "r.json"
    assert done_path(run_dir, str(results)) == results  # records of older versions: absolute, read as they are


def test_sidecar_names_its_files_by_name(tmp_path):
    from pretrain.export import write_weights

    out = tmp_path / "deep" / "backbone.pt"
    out.parent.mkdir()
    write_weights({"w": torch.zeros(2)}, out, {"backbone": "resnet18", "safetensors": "backbone.safetensors"})
    sidecar = json.loads(Path(str(out) + ".json").read_text())
    assert sidecar["out"] == "backbone.pt" and str(tmp_path) not in json.dumps(sidecar)
