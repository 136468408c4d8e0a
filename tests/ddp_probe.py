"""Callbacks tests add through the command line (`--trainer.callbacks+=tests.ddp_probe.NAME`).

StepProbe (the DDP tests): after every optimizer step, each process writes the item indices of its batch and its
flattened parameters to `out_dir/rank{R}_step{S}.pt`. SigtermAtStep: the process sends itself SIGTERM after a given
optimizer step, as a scheduler's pre-emption would."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch


class StepProbe(pl.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        params = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        record = {"index": batch["index"].tolist(), "params": params}
        torch.save(record, self.out_dir / f"rank{trainer.global_rank}_step{trainer.global_step}.pt")


class SigtermAtStep(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)
