"""Training callbacks: the image | ROI | mask | reconstruction panel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import TensorBoardLogger
from torchvision.utils import make_grid, save_image

PANEL_COLUMNS = ("image", "roi", "visible", "reconstruction")
_ROI_TINT = torch.tensor([1.0, 0.15, 0.15]).view(3, 1, 1)  # red
_MASKED_GREY = 0.5


def reconstruction_panel(
    image_b3HW: torch.Tensor, roi_b1HW: torch.Tensor, active_b1hw: torch.Tensor, recon_b3HW: torch.Tensor
) -> torch.Tensor:
    """One row per image: the input, the ROI tinted red, the visible cells (masked ones grey) and the
    reconstruction (visible cells are the input). Inputs in [0, 1]; returns a (3, rows*H', 4*W') grid."""
    image = image_b3HW.detach().float().cpu().clamp(0, 1)
    roi = (roi_b1HW.detach().cpu() > 0).float()
    visible = F.interpolate(active_b1hw.detach().float().cpu(), size=image.shape[-2:], mode="nearest")
    roi_overlay = image * (1 - 0.45 * roi) + 0.45 * roi * _ROI_TINT
    visible_only = image * visible + _MASKED_GREY * (1 - visible)
    recon = recon_b3HW.detach().float().cpu().clamp(0, 1)
    tiles = torch.stack([image, roi_overlay, visible_only, recon], dim=1).flatten(0, 1)  # row-major per image
    return make_grid(tiles, nrow=len(PANEL_COLUMNS), padding=2, pad_value=1.0)


class ReconstructionPanel(pl.Callback):
    """Every `every_n_steps` optimizer steps, logs a reconstruction panel of the first `max_images` images
    of the training batch (see `reconstruction_panel`) to TensorBoard and as `LOG_DIR/panels/step_XXXXXXX.png`.

    Uses the recon and mask the training step already computed (returned in its outputs) and the module's
    `denormalise`; rank 0 only.
    """

    def __init__(self, every_n_steps: int = 500, max_images: int = 4) -> None:
        if every_n_steps < 1 or max_images < 1:
            raise ValueError("every_n_steps and max_images must be >= 1")
        self.every_n_steps = every_n_steps
        self.max_images = max_images
        self.out_dir: Path | None = None
        self._last_step = -1

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # trainer.log_dir broadcasts from rank 0: every rank must ask, so ask here, not in a rank-0-only hook
        self.out_dir = Path(trainer.log_dir or trainer.default_root_dir) / "panels"

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or step % self.every_n_steps or step == self._last_step:
            return
        if not isinstance(outputs, dict) or "recon_b3HW" not in outputs:
            raise RuntimeError("ReconstructionPanel needs a training_step that returns recon_b3HW and active_b1hw")
        self._last_step = step  # several micro-batches share a step under gradient accumulation
        n = self.max_images
        panel = reconstruction_panel(
            batch["image"][:n],
            batch["roi"][:n],
            outputs["active_b1hw"][:n],
            pl_module.denormalise(outputs["recon_b3HW"][:n]),
        )
        assert self.out_dir is not None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        save_image(panel, self.out_dir / f"step_{step:07d}.png")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("panel/" + "|".join(PANEL_COLUMNS), panel, global_step=step)
