"""The Lightning module of masked pretraining: SparkMIM + a mask sampler + SparK's optimisation recipe.

Normalisation: batches arrive in [0, 1] (RoiDataModule); this module subtracts a per-channel mean and divides
by a std on the training device before the model sees them: the data module's `pixel_stats` (the dataset's,
as the MWM fork, or ImageNet's), ImageNet's without a data module. They are buffers, so a checkpoint keeps
the numbers a run trained with and a resumed run uses those. `SparkMIM` is normalisation-agnostic (its target
is the same image, normalised per patch), so `recon_b3HW` comes back in the normalised space and
`denormalise` brings it back to [0, 1] for panels.
"""

from __future__ import annotations

from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.optim import Lamb, param_groups_weight_decay

from data.provenance import code_version
from pretrain.masking import DifferentiatedMasking, RandomMasking
from pretrain.schedules import WarmupCosineSchedule, effective_batch_size, scaled_lr, set_run_horizon
from pretrain.seeding import seeded_generator
from pretrain.spark import FAST_PATHS, SparkMIM

# Besides every 1-D parameter (norm weights) and every bias, these never decay (fnmatch patterns).
NO_WEIGHT_DECAY = ("*mask_token*",)
MASK_STATS = ("mask/expected_ratio", "mask/realised_ratio", "mask/empty_roi_share")


class MaskedPretraining(pl.LightningModule):
    """SparK-style masked image modelling with random (SparK) or differentiated ROI (MWM) masking.

    Args:
        backbone, input_size, decoder, decoder_width, per_channel_target, drop_path_rate: passed to `SparkMIM`
            (timm convnet name, square input side, SparK's decoder or the lighter pixel-shuffle one, its width
            at the coarsest level, the target's normalisation, stochastic depth; None = SparK's per backbone).
        sync_bn: all-reduce BatchNorm statistics across processes; None = on when the trainer's world size > 1.
        masking: "differentiated" (MWM: ROI cells masked at `r_roi`, background at `r_bg`; a cell is ROI by
            `roi_rule` / `roi_min_fraction`, default the MWM fork's nearest resize; cells kept per region
            int(n(1-r)) in floats as the fork, or the exact decimal floor with `exact_counts`) or "random"
            (SparK: round(N(1-mask_ratio)) cells kept). See `pretrain.masking`.
        optimizer: "lamb" (timm's LAMB, SparK's choice) or "adamw"; `betas` for both, None = SparK's:
            (0.9, 0.95) for ResNets, (0.9, 0.999) for ConvNeXts.
        base_lr: lr per 256 images; the lr is base_lr x effective batch / 256 (per-device batch x devices x
            nodes x gradient accumulation) unless `lr` gives it outright.
        weight_decay, weight_decay_end: cosine ramp over the run (norms, biases, mask tokens: none).
        warmup_epochs: linear lr warm-up (fractions allowed), then cosine down to `min_lr_ratio` x lr, per step.
        fast_path: speed settings of the model that keep its function (`pretrain.spark.FAST_PATHS`: "plain",
            "channels_last", "bf16", "compile", "fast", "all"); default "plain". On GPUs the configs' `precision:
            bf16-mixed` already autocasts; "bf16" adds autocast on CPUs with native bf16. See docs/BENCHMARKS.md.
        seed: seeds the masks, drawn per batch from (seed, epoch, batch, rank), so a resumed run draws the
            masks of the uninterrupted one (the CLI passes the same seed to the data module).
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        input_size: int = 224,
        decoder: Literal["spark", "pixel_shuffle"] = "spark",
        decoder_width: int = 768,
        per_channel_target: bool = False,
        drop_path_rate: float | None = None,
        sync_bn: bool | None = None,
        masking: Literal["differentiated", "random"] = "differentiated",
        r_roi: float = 0.8,
        r_bg: float = 0.4,
        roi_rule: Literal["nearest", "any", "fraction"] = "nearest",
        roi_min_fraction: float = 0.0,
        exact_counts: bool = False,
        mask_ratio: float = 0.6,
        optimizer: Literal["lamb", "adamw"] = "lamb",
        base_lr: float = 2e-4,
        lr: float | None = None,
        betas: tuple[float, float] | None = None,
        weight_decay: float = 0.04,
        weight_decay_end: float = 0.2,
        warmup_epochs: float = 40.0,
        min_lr_ratio: float = 1e-3,
        seed: int = 0,
        fast_path: str = "plain",
    ) -> None:
        super().__init__()
        if fast_path not in FAST_PATHS:
            raise ValueError(f"fast_path must be one of {sorted(FAST_PATHS)}, got {fast_path!r}")
        self.save_hyperparameters()  # plain values only: checkpoints stay loadable with weights_only=True
        self.model = self._build_model(sync_bn=bool(sync_bn))
        self.masking = build_masking(
            masking,
            r_roi=r_roi,
            r_bg=r_bg,
            roi_rule=roi_rule,
            roi_min_fraction=roi_min_fraction,
            exact_counts=exact_counts,
            mask_ratio=mask_ratio,
        )
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1))

    # ------------------------------------------------------------------ model
    def setup(self, stage: str) -> None:
        # Runs after the data module's setup, before checkpoint weights are restored and the optimizer is built.
        stats = getattr(self.trainer.datamodule, "pixel_stats", None)
        if stats is not None:
            self.pixel_mean.copy_(torch.tensor(stats.mean).view(1, 3, 1, 1))
            self.pixel_std.copy_(torch.tensor(stats.std).view(1, 3, 1, 1))
        want_sync = self.hparams.sync_bn if self.hparams.sync_bn is not None else self.trainer.world_size > 1
        if want_sync and not self._sync_bn:
            synced = self._build_model(sync_bn=True)
            synced.load_state_dict(self.model.state_dict())  # same names; keeps weights loaded before fit
            self.model = synced.to(self.device)
            rank_zero_info("MaskedPretraining: BatchNorm statistics synchronised across processes (sync_bn)")

    def _build_model(self, sync_bn: bool) -> SparkMIM:
        hp = self.hparams
        return SparkMIM(
            hp.backbone,
            hp.input_size,
            decoder_width=hp.decoder_width,
            decoder=hp.decoder,
            per_channel_target=hp.per_channel_target,
            drop_path_rate=hp.drop_path_rate,
            sync_bn=sync_bn,
            fast=FAST_PATHS[hp.get("fast_path", "plain")],  # checkpoints from before the option: plain
        )

    @property
    def _sync_bn(self) -> bool:
        return any(getattr(m, "sync", False) for m in self.model.modules())

    def normalise(self, img_b3HW: torch.Tensor) -> torch.Tensor:
        return (img_b3HW - self.pixel_mean) / self.pixel_std

    def denormalise(self, img_b3HW: torch.Tensor) -> torch.Tensor:
        return img_b3HW.float() * self.pixel_std + self.pixel_mean

    def forward(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Mask one batch and reconstruct it -> SparkMIM's outputs + `active_b1hw` + the mask statistics."""
        img_b3HW = self.normalise(batch["image"])
        # ROI (input resolution) -> visible cells on the encoder grid, sampled on this device
        grid_hw = self.model.grid_hw(tuple(img_b3HW.shape[-2:]))
        active_b1hw, stats = self.masking(batch["roi"], grid_hw, generator=generator)
        out = self.model(img_b3HW, active_b1hw)
        return {**out, **stats, "active_b1hw": active_b1hw}

    # ------------------------------------------------------------------ steps
    def _mask_generator(self, *where: int | str) -> torch.Generator:
        return seeded_generator(self.device, self.hparams.seed, "mask", *where, self.global_rank)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        out = self(batch, self._mask_generator("train", self.current_epoch, batch_idx))
        self.log("train/loss", out["loss"], prog_bar=True)
        for name in MASK_STATS:
            self.log(name, out[name])
        groups = self.trainer.optimizers[0].param_groups  # the values this step's update uses
        self.log("lr", groups[0]["lr"])
        self.log("wd", max(g["weight_decay"] for g in groups))
        # recon and mask go to callbacks (ReconstructionPanel) through `outputs`; no second forward pass
        return {"loss": out["loss"], "recon_b3HW": out["recon_b3HW"].detach(), "active_b1hw": out["active_b1hw"]}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        # the same masks every epoch, so validation losses are comparable across epochs
        out = self(batch, self._mask_generator("val", batch_idx))
        self.log("val/loss", out["loss"], sync_dist=True, batch_size=batch["image"].shape[0])
        self.log("val/realised_ratio", out["mask/realised_ratio"], sync_dist=True, batch_size=batch["image"].shape[0])
        return out["loss"]

    # ------------------------------------------------------------------ optimisation
    def effective_batch_size(self) -> int:
        """Images per optimizer step (`pretrain.schedules.effective_batch_size`)."""
        return effective_batch_size(self.trainer)

    def learning_rate(self) -> float:
        hp = self.hparams
        return hp.lr if hp.lr is not None else scaled_lr(hp.base_lr, self.trainer)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        lr = self.learning_rate()
        groups = param_groups_weight_decay(self.model, hp.weight_decay, no_weight_decay_list=NO_WEIGHT_DECAY)
        betas = spark_betas(hp.backbone) if hp.betas is None else tuple(hp.betas)
        if hp.optimizer == "lamb":
            # gradient clipping is the trainer's (gradient_clip_val), not LAMB's own global-norm clip
            optimizer = Lamb(groups, lr=lr, betas=betas, weight_decay=hp.weight_decay, max_grad_norm=None)
        elif hp.optimizer == "adamw":
            optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=hp.weight_decay)
        else:
            raise ValueError(f"unknown optimizer {hp.optimizer!r}; use 'lamb' or 'adamw'")
        # The horizon is set in on_train_start: asking the trainer for it here would build the train loader
        # before a resumed run restores its epoch (see RoiDataModule).
        scheduler = WarmupCosineSchedule(optimizer, weight_decay_end=hp.weight_decay_end, min_lr_ratio=hp.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        set_run_horizon(self.trainer, self.lr_schedulers(), self.hparams.warmup_epochs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["code_version"] = code_version()  # the code that wrote it (data.provenance)


def spark_betas(backbone: str) -> tuple[float, float]:
    """SparK's Adam betas (`arg_util.py`, `ada`): (0.9, 0.999) for ConvNeXts, (0.9, 0.95) otherwise."""
    return (0.9, 0.999) if "convnext" in backbone else (0.9, 0.95)


def build_masking(
    kind: str,
    *,
    r_roi: float,
    r_bg: float,
    roi_rule: str,
    roi_min_fraction: float,
    exact_counts: bool,
    mask_ratio: float,
) -> RandomMasking | DifferentiatedMasking:
    if kind == "differentiated":
        return DifferentiatedMasking(
            r_roi=r_roi, r_bg=r_bg, rule=roi_rule, min_fraction=roi_min_fraction, exact_counts=exact_counts
        )
    if kind == "random":
        return RandomMasking(ratio=mask_ratio)
    raise ValueError(f"unknown masking {kind!r}; use 'differentiated' or 'random'")
