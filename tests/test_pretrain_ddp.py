"""Two-process DDP pretraining on the CPU (gloo) through the real command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch

from tests.pretrain_lightning_fixtures import write_roi_corpus

REPO = Path(__file__).resolve().parents[1]


def test_two_process_ddp_fit_through_the_cli(tmp_path):
    corpus, cache = write_roi_corpus(tmp_path / "data", n=20)
    root = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "pretrain",
        "fit",
        "--config",
        str(REPO / "configs/pretrain/tiny_cpu.yaml"),
        "--data.corpus",
        str(corpus),
        "--data.cache",
        str(cache),
        "--data.batch_size",
        "4",
        "--data.num_workers",
        "0",
        "--data.val_fraction",
        "0.2",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--trainer.max_steps",
        "3",
        "--trainer.default_root_dir",
        str(root),
        "--trainer.enable_progress_bar",
        "false",
        "--panel.every_n_steps",
        "2",
        "--trainer.callbacks+=tests.ddp_probe.StepProbe",
        f"--trainer.callbacks.out_dir={tmp_path / 'probe'}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "sync_bn" in output  # two processes: BatchNorm statistics synchronised automatically

    runs = sorted((root / "logs").iterdir())
    assert [r.name for r in runs] == ["version_0"], runs  # both ranks and both loggers: one run folder
    run = runs[0]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3
    assert ckpt["hyper_parameters"]["sync_bn"] is None and ckpt["hyper_parameters"]["backbone"] == "resnet18"
    # 15 training items over 2 ranks x batch 4 -> 2 steps per epoch: the per-device batch times the devices
    assert ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == 2

    metrics = pd.read_csv(run / "metrics.csv")
    train = metrics.dropna(subset=["train/loss"])
    assert sorted(train["step"]) == [0, 1, 2] and train["train/loss"].gt(0).all()
    assert train["mask/realised_ratio"].notna().all()
    assert metrics["val/loss"].notna().any()
    assert (run / "panels" / "step_0000002.png").is_file() and (run / "config.yaml").is_file()

    # every step: the two ranks trained on different items and ended with identical weights
    for step in (1, 2, 3):
        rank0, rank1 = (torch.load(tmp_path / "probe" / f"rank{r}_step{step}.pt", weights_only=True) for r in (0, 1))
        assert len(rank0["index"]) == len(rank1["index"]) == 4 and not set(rank0["index"]) & set(rank1["index"])
        assert torch.equal(rank0["params"], rank1["params"]), step
    before, after = (torch.load(tmp_path / "probe" / f"rank0_step{s}.pt", weights_only=True)["params"] for s in (1, 2))
    assert not torch.equal(before, after)  # the weights did change
