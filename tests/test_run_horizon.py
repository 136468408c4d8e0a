"""The one batch / lr-scaling / schedule-horizon helper (pretrain.schedules) every trainer uses: counted by hand on
a real Lightning run of 20 samples in batches of 4 with gradient accumulation 2."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from pretrain.schedules import WarmupCosineSchedule, effective_batch_size, scaled_lr, set_run_horizon

N, BATCH, ACCUMULATE, EPOCHS = 20, 4, 2, 2


class Data(pl.LightningDataModule):
    def __init__(self, batch_size: int | None) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.randn(N, 3)), batch_size=BATCH)


class Linear(pl.LightningModule):
    """Records what the helper says when training starts."""

    def __init__(self, warmup_epochs: float, warmup_steps: int) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
        self.warmup = (warmup_epochs, warmup_steps)
        self.seen: dict = {}

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        if self.trainer.datamodule is not None:  # without one, the batch is known once the loader exists
            self.seen["batch"] = effective_batch_size(self.trainer)
            self.seen["lr"] = scaled_lr(0.256, self.trainer)
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        self.schedule = WarmupCosineSchedule(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.schedule, "interval": "step"}}

    def on_train_start(self) -> None:
        set_run_horizon(self.trainer, self.schedule, *self.warmup)
        self.seen["horizon"] = (self.schedule.total_steps, self.schedule.warmup_steps)
        self.seen["batch_at_start"] = effective_batch_size(self.trainer)


def trainer(**overrides) -> pl.Trainer:
    args = dict(accelerator="cpu", max_epochs=EPOCHS, accumulate_grad_batches=ACCUMULATE, logger=False)
    args |= dict(enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    return pl.Trainer(**(args | overrides))


def test_batch_lr_and_horizon_of_a_run_with_gradient_accumulation():
    module, run = Linear(warmup_epochs=1.0, warmup_steps=1), trainer()
    run.fit(module, Data(BATCH))
    # 4 images x 1 device x 2 accumulated batches per optimizer step; lr 0.256 per 256 images -> 0.256 x 8 / 256
    assert module.seen["batch"] == 8
    assert module.seen["lr"] == pytest.approx(0.008)
    # 5 batches per epoch, stepping after batches 2, 4 and 5 -> 3 optimizer steps per epoch, 6 in 2 epochs;
    # warm-up: 1 step + 1 epoch of 3 steps
    assert module.seen["horizon"] == (6, 4)
    assert run.global_step == 6


def test_the_loader_batch_size_serves_without_a_datamodule_batch_size():
    module = Linear(warmup_epochs=0.5, warmup_steps=0)
    run = trainer(accumulate_grad_batches=1, max_epochs=1)
    run.fit(module, train_dataloaders=Data(None).train_dataloader())
    assert module.seen["batch_at_start"] == BATCH
    assert module.seen["horizon"] == (5, 2)  # 5 steps; round(0.5 x 5) = round(2.5) = 2 (half to even)


def test_no_batch_size_is_an_error_that_says_what_to_set():
    with pytest.raises(ValueError, match="set model.lr"):
        trainer().fit(Linear(1.0, 0), Data(None))


def test_an_endless_run_has_no_horizon():
    with pytest.raises(ValueError, match="needs a finite run"):
        trainer(max_epochs=-1, max_steps=-1).fit(Linear(1.0, 0), Data(BATCH))
