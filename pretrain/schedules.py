"""Per-step learning-rate and weight-decay schedules (SparK's recipe).

lr: linear warm-up from `warmup_start_ratio`·peak to the peak, then cosine down to `min_lr_ratio`·peak.
weight decay: cosine ramp from its start value (0.04) to `weight_decay_end` (0.2) over the whole run, applied
only to parameter groups that decay at all (norms, biases and mask tokens stay at 0).

Both are pure functions of the optimizer step, so a run resumed from a checkpoint follows exactly the curve of
an uninterrupted one: the scheduler's only state is the step counter and the horizon.

The run's size, for every Lightning module that trains with this schedule (masked pretraining, MaskedCLIP,
fine-tuning): `effective_batch_size` (the lr-scaling batch), `scaled_lr` (base_lr per 256 images) and
`set_run_horizon` (the schedule's total and warm-up steps, once the trainer knows its batches).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

if TYPE_CHECKING:
    import pytorch_lightning as pl


def warmup_cosine(
    step: int,
    *,
    warmup_steps: int,
    total_steps: int,
    warmup_start_ratio: float = 0.005,
    min_ratio: float = 0.001,
) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based) of a run of `total_steps` steps."""
    if step < warmup_steps:
        return warmup_start_ratio + (1.0 - warmup_start_ratio) * step / warmup_steps
    decay_steps = max(total_steps - 1 - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_ramp(step: int, *, total_steps: int, start: float, end: float) -> float:
    """Value going from `start` (step 0) to `end` (last step) along half a cosine."""
    progress = min(step / max(total_steps - 1, 1), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosineSchedule(LRScheduler):
    """Sets every group's lr (warm-up + cosine) and decaying groups' weight decay (cosine ramp) per step.

    The horizon (`total_steps`, `warmup_steps`) may be unknown when the optimizer is built (Lightning knows the
    number of batches only once the train loader exists); `set_horizon` fixes it later and re-applies the
    values for the current step. Until then the lr stays at the warm-up start.
    Each group's starting weight decay is remembered as `initial_weight_decay` (like torch's `initial_lr`).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        total_steps: int | None = None,
        warmup_steps: int = 0,
        weight_decay_end: float | None = None,
        warmup_start_ratio: float = 0.005,
        min_lr_ratio: float = 0.001,
        last_epoch: int = -1,
    ) -> None:
        # set before super().__init__, which already takes the first step
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.weight_decay_end = weight_decay_end
        self.warmup_start_ratio = warmup_start_ratio
        self.min_lr_ratio = min_lr_ratio
        for group in optimizer.param_groups:
            group.setdefault("initial_weight_decay", group.get("weight_decay", 0.0))
        super().__init__(optimizer, last_epoch)

    def set_horizon(self, total_steps: int, warmup_steps: int) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.total_steps = total_steps
        self.warmup_steps = min(max(warmup_steps, 0), total_steps - 1)
        lrs = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        self._last_lr = lrs
        self._apply_weight_decay()

    def lr_factor(self, step: int) -> float:
        if self.total_steps is None:
            return self.warmup_start_ratio
        return warmup_cosine(
            step,
            warmup_steps=self.warmup_steps,
            total_steps=self.total_steps,
            warmup_start_ratio=self.warmup_start_ratio,
            min_ratio=self.min_lr_ratio,
        )

    def get_lr(self) -> list[float]:
        factor = self.lr_factor(max(self.last_epoch, 0))
        return [base_lr * factor for base_lr in self.base_lrs]

    def step(self, epoch: int | None = None) -> None:
        super().step(epoch)
        self._apply_weight_decay()

    def _apply_weight_decay(self) -> None:
        if self.weight_decay_end is None or self.total_steps is None:
            return
        for group in self.optimizer.param_groups:
            start = group["initial_weight_decay"]
            if start > 0:  # groups without decay (norms, biases, mask tokens) stay at 0
                group["weight_decay"] = cosine_ramp(
                    max(self.last_epoch, 0), total_steps=self.total_steps, start=start, end=self.weight_decay_end
                )


def effective_batch_size(trainer: pl.Trainer) -> int:
    """Images per optimizer step: per-device batch (the data module's `batch_size`, else the train loader's) x
    devices x nodes x gradient accumulation."""
    per_device = getattr(trainer.datamodule, "batch_size", None)
    if per_device is None and trainer.train_dataloader is not None:
        per_device = trainer.train_dataloader.batch_size
    if per_device is None:
        raise ValueError(
            "cannot tell the batch size to scale the learning rate: train with a datamodule that has `batch_size` "
            "or set model.lr"
        )
    return int(per_device) * trainer.world_size * trainer.accumulate_grad_batches


def scaled_lr(base_lr: float, trainer: pl.Trainer) -> float:
    """`base_lr` per 256 images scaled by the effective batch (MAE's and SparK's rule)."""
    return base_lr * effective_batch_size(trainer) / 256


def set_run_horizon(
    trainer: pl.Trainer, schedule: WarmupCosineSchedule, warmup_epochs: float = 0.0, warmup_steps: int = 0
) -> None:
    """Fix `schedule`'s horizon from the trainer: total optimizer steps of the run, warm-up of `warmup_steps` +
    `warmup_epochs` epochs (fractions allowed) of optimizer steps. Call from `on_train_start`: asking earlier
    builds the train loader before a resumed run restores its epoch."""
    total_steps = trainer.estimated_stepping_batches
    if not math.isfinite(total_steps):
        raise ValueError("the lr schedule needs a finite run: set trainer.max_epochs or trainer.max_steps")
    steps_per_epoch = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
    schedule.set_horizon(int(total_steps), warmup_steps + round(warmup_epochs * steps_per_epoch))
