"""The Lightning module of MaskedCLIP pretraining: `MaskedCLIP` + a mask sampler on the ViT patch grid + AdamW.

Batches arrive in [0, 1] (RoiDataModule) with `text_ids` and `paired` (PairedDataModule); images are
normalised here with CLIP's (OpenAI) mean/std, the statistics the open_clip export declares, so the exported
towers see images as in training.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import pytorch_lightning as pl
import torch

from data.clip_folder import OPENAI_MEAN, OPENAI_STD
from data.portable import portable
from pretrain.maskedclip.config import DecoderCfg, LossCfg, TextCfg, VisionCfg, as_cfg
from pretrain.maskedclip.gather import gather_rows, pair_counts, process_count
from pretrain.maskedclip.model import LOSS_TERMS, MaskedCLIP
from pretrain.maskedclip.optim import param_groups
from pretrain.maskedclip.retrieval import recall_at_k
from pretrain.masking import DifferentiatedMasking, RandomMasking
from pretrain.schedules import WarmupCosineSchedule, effective_batch_size, scaled_lr, set_run_horizon
from pretrain.seeding import derive_seed, seeded_generator

MASK_STATS = ("mask/expected_ratio", "mask/realised_ratio", "mask/empty_roi_share")


def pair_keys(batch: dict[str, Any]) -> torch.Tensor | None:
    """(B, 2) int64: each item's report group and study group (`PairedItems`); None for batches without them."""
    if "report_group" not in batch or "study_group" not in batch:
        return None
    return torch.stack([batch["report_group"].long(), batch["study_group"].long()], dim=1)


class MaskedClipPretraining(pl.LightningModule):
    """MaskedCLIP (see `MaskedCLIP` for the model and the loss terms) with random (MAE) or differentiated (MWM)
    masking of the ViT patch grid.

    Args:
        embed_dim: the joint image-text space's width.
        vision, text, decoders, losses: the model's groups (`pretrain.maskedclip.config`: `model.vision.vit`,
            `model.text.context_length`, `model.losses.lambda_clip`, ...); a dict is read as its group.
        grad_checkpointing: recompute the ViT's and BERT's blocks in the backward pass (less memory, more time).
        masking: "differentiated" (MWM: ROI cells at `r_roi`, background at `r_bg`, ROI by `roi_rule` /
            `roi_min_fraction`) or "random" (MAE: uniform at `mask_ratio`).
        optimizer: "adamw" (MAE's); base_lr per 256 images scaled by the effective batch unless `lr` is given;
            betas, weight_decay (constant unless `weight_decay_end`), warmup_epochs, min_lr_ratio: the schedule
            (per-tower multiples and layer decay: `vision` / `text`).
        seed: seeds the masks, drawn per batch from (seed, epoch, batch, rank), as `MaskedPretraining` does.
    """

    def __init__(
        self,
        embed_dim: int = 512,
        vision: VisionCfg = VisionCfg(),  # noqa: B008 - frozen: one shared default is safe
        text: TextCfg = TextCfg(),  # noqa: B008
        decoders: DecoderCfg = DecoderCfg(),  # noqa: B008
        losses: LossCfg = LossCfg(),  # noqa: B008
        grad_checkpointing: bool = False,
        masking: Literal["differentiated", "random"] = "differentiated",
        r_roi: float = 0.8,
        r_bg: float = 0.4,
        roi_rule: Literal["any", "fraction"] = "any",
        roi_min_fraction: float = 0.0,
        mask_ratio: float = 0.75,
        optimizer: Literal["adamw"] = "adamw",
        base_lr: float = 1.5e-4,
        lr: float | None = None,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.05,
        weight_decay_end: float | None = None,
        warmup_epochs: float = 40.0,
        min_lr_ratio: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        cfgs = (as_cfg(VisionCfg, vision), as_cfg(TextCfg, text), as_cfg(DecoderCfg, decoders), as_cfg(LossCfg, losses))
        # save_hyperparameters reads the arguments' current values: the groups as dicts, plain values only, so
        # checkpoints stay loadable with weights_only=True
        vision, text, decoders, losses = (dataclasses.asdict(cfg) for cfg in cfgs)
        self.save_hyperparameters()
        self.hparams.update(portable(dict(self.hparams)))  # no absolute path in checkpoints (docs/CORPUS.md)
        self.vision_cfg, self.text_cfg, decoders, losses = cfgs
        if optimizer != "adamw":
            raise ValueError(f"unknown optimizer {optimizer!r}; MaskedCLIP trains with 'adamw'")
        self.model = MaskedCLIP(embed_dim, self.vision_cfg, self.text_cfg, decoders, losses)
        if self.vision_cfg.init is not None:
            from pretrain.maskedclip.image_init import load_vit_weights, read_vit_weights

            init = self.vision_cfg.init
            load_vit_weights(self.model.encoder, self.model.bridge, read_vit_weights(init), init)
        if self.text_cfg.lock:
            self.model.text.lock(self.text_cfg.lock_unlocked_layers, self.text_cfg.lock_freeze_layer_norm)
        if grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        if masking == "differentiated":
            self.masking = DifferentiatedMasking(r_roi=r_roi, r_bg=r_bg, rule=roi_rule, min_fraction=roi_min_fraction)
        elif masking == "random":
            self.masking = RandomMasking(ratio=mask_ratio)
        else:
            raise ValueError(f"unknown masking {masking!r}; use 'differentiated' or 'random'")
        self.register_buffer("pixel_mean", torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(OPENAI_STD).view(1, 3, 1, 1), persistent=False)

    def normalise(self, img_b3HW: torch.Tensor) -> torch.Tensor:
        return (img_b3HW - self.pixel_mean) / self.pixel_std

    def denormalise(self, img_b3HW: torch.Tensor) -> torch.Tensor:
        return img_b3HW.float() * self.pixel_std + self.pixel_mean

    def forward(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Mask one batch and compute the loss terms -> MaskedCLIP's outputs + `active_b1hw` + mask statistics."""
        img_b3HW = self.normalise(batch["image"])
        grid_hw = self.model.grid_hw(tuple(img_b3HW.shape[-2:]))
        # the samplers' `active` map is True = visible, MaskedCLIP's polarity
        active_b1hw, stats = self.masking(batch["roi"], grid_hw, generator=generator)
        out = self.model(img_b3HW, active_b1hw, batch["text_ids"], batch["paired"].bool(), pair_keys(batch))
        return {**out, **stats, "active_b1hw": active_b1hw}

    # ------------------------------------------------------------------ steps
    def _mask_generator(self, *where: int | str) -> torch.Generator:
        return seeded_generator(self.device, self.hparams.seed, "mask", *where, self.global_rank)

    def _log_terms(self, stage: str, out: dict[str, torch.Tensor], batch: dict[str, Any], **kwargs: Any) -> None:
        batch_size = batch["image"].shape[0]
        self.log(f"{stage}/loss", out["loss"], prog_bar=stage == "train", batch_size=batch_size, **kwargs)
        for name in LOSS_TERMS:
            if name in out:  # a term is absent when switched off, or L_CLIP in a batch without pairs
                self.log(f"{stage}/{name}", out[name], batch_size=batch_size, **kwargs)
        self.log(f"{stage}/paired_share", batch["paired"].float().mean(), batch_size=batch_size, **kwargs)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        # Dropout (BERT's) draws from the global RNG, which a resumed run does not get back: it is seeded from
        # the run's position instead, like the masks, inside a fork that leaves the caller's RNG untouched.
        where = (self.current_epoch, batch_idx, self.global_rank)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(derive_seed(self.hparams.seed, "dropout", *where))
            out = self(batch, self._mask_generator("train", self.current_epoch, batch_idx))
        self._log_terms("train", out, batch)
        for name in MASK_STATS:
            self.log(name, out[name])
        self.log("train/temperature", self.temperature())
        groups = self.trainer.optimizers[0].param_groups  # the values this step's update uses
        # the lr of the groups at x1 (decoders, temperature: always present), not a tower's multiple
        self.log("lr", next(g["lr"] for g in groups if g["lr_scale"] == 1.0))
        self.log("wd", max(g["weight_decay"] for g in groups))
        result = {"loss": out["loss"], "active_b1hw": out["active_b1hw"]}
        if "recon_b3HW" in out:  # for ReconstructionPanel, without a second forward pass
            result["recon_b3HW"] = out["recon_b3HW"]
        return result

    def on_validation_epoch_start(self) -> None:
        self._val_pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self(batch, self._mask_generator("val", batch_idx))  # the same masks every epoch
        self._log_terms("val", out, batch, sync_dist=True)
        paired_b = batch["paired"].bool()
        keys_bk = pair_keys(batch)
        if bool(paired_b.any()) and keys_bk is not None:  # the embeddings L_CLIP compares, for recall@K
            img_pd = self.model.encode_image(self.normalise(batch["image"][paired_b]))[1]
            txt_pd = self.model.text(batch["text_ids"][paired_b])
            self._val_pairs.append((img_pd.float(), txt_pd.float(), keys_bk[paired_b]))
        return out["loss"]

    def on_validation_epoch_end(self) -> None:
        """Image -> report and report -> image recall@1/5/10 over every validation pair (of every process)."""
        pairs = getattr(self, "_val_pairs", [])
        width = self.model.bridge.proj.out_features
        img = torch.cat([p[0] for p in pairs]) if pairs else torch.zeros(0, width, device=self.device)
        txt = torch.cat([p[1] for p in pairs]) if pairs else torch.zeros(0, width, device=self.device)
        keys = torch.cat([p[2] for p in pairs]) if pairs else torch.zeros(0, 2, dtype=torch.long, device=self.device)
        if process_count() > 1:  # every process computes the same figures over the union
            counts = pair_counts(img.shape[0], self.device)
            img, txt = gather_rows(img, counts), gather_rows(txt, counts)
            keys = gather_rows(keys, counts, dtype=torch.float64)
        self._val_pairs = []
        if img.shape[0] < 2:
            return
        for name, value in recall_at_k(img, txt, keys).items():
            self.log(f"val/{name}", value)
        self.log("val/retrieval_pairs", float(img.shape[0]))

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # after each real update, not per micro-batch: open_clip's clamp of the learned temperature, the EMA teacher
        self.model.clamp_logit_scale()
        self.model.update_teacher()

    def temperature(self) -> torch.Tensor:
        """CLIP's temperature, as logged (`train/temperature`)."""
        return self.model.temperature()

    # ------------------------------------------------------------------ optimisation
    def effective_batch_size(self) -> int:
        """Images per optimizer step (`pretrain.schedules.effective_batch_size`)."""
        return effective_batch_size(self.trainer)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        lr = hp.lr if hp.lr is not None else scaled_lr(hp.base_lr, self.trainer)
        groups = param_groups(self.model, lr, hp.weight_decay, self.vision_cfg, self.text_cfg)
        # foreach: one fused update over the many small tensors of two towers and two decoders (CPU too)
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay, foreach=True)
        scheduler = WarmupCosineSchedule(optimizer, weight_decay_end=hp.weight_decay_end, min_lr_ratio=hp.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        # the horizon is known only now (see MaskedPretraining.configure_optimizers)
        set_run_horizon(self.trainer, self.lr_schedulers(), self.hparams.warmup_epochs)
