"""Two-process DDP MaskedCLIP training on the CPU (gloo) through the real command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch

from tests.maskedclip_fixtures import cpu_preset_fit_args, write_paired_corpus

REPO = Path(__file__).resolve().parents[1]


def test_two_process_ddp_fit_with_unpaired_batches(tmp_path):
    # a third of the images paired, batches of 4 per rank: some ranks' batches hold no pair (or one), so DDP must
    # accept parameters (text tower, bridge) without gradient on one rank and with on the other, and the pair
    # exchange of L_CLIP's gathered negatives must run on every rank, with or without pairs of its own
    corpus, cache, pairs = write_paired_corpus(tmp_path / "data", n=20, paired_share=0.35)
    root = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "pretrain",
        *cpu_preset_fit_args(
            corpus,
            cache,
            pairs,
            "--data.batch_size=4",
            "--data.val_fraction=0.2",
            "--model.vision.input_size=64",
            "--trainer.devices=2",
            "--trainer.strategy=ddp_find_unused_parameters_true",
            "--trainer.max_steps=3",
            f"--trainer.default_root_dir={root}",
            "--trainer.enable_progress_bar=false",
            "--panel.every_n_steps=2",
        ),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    runs = sorted((root / "logs").iterdir())
    assert [r.name for r in runs] == ["version_0"], runs
    ckpt = torch.load(runs[0] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3 and ckpt["hyper_parameters"]["vision"]["vit"] == "test_vit2"
    train = pd.read_csv(runs[0] / "metrics.csv").dropna(subset=["train/loss"])
    assert sorted(train["step"]) == [0, 1, 2] and train["train/loss_mim"].gt(0).all()
    assert (runs[0] / "panels" / "step_0000002.png").is_file()
