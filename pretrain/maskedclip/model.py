"""MaskedCLIP's five modules and its objective: L = L_MIM + lambda_clip * L_CLIP + lambda_mkd * L_MKD."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn

from pretrain.maskedclip.bridge import Bridge
from pretrain.maskedclip.feature_decoder import FeatureDecoder
from pretrain.maskedclip.image_decoder import ImageDecoder, patch_target
from pretrain.maskedclip.image_encoder import ImageEncoder, vit_depth
from pretrain.maskedclip.losses import MAX_LOGIT_SCALE, ClipLoss, distillation_target, masked_mse
from pretrain.maskedclip.teacher import EmaTeacher
from pretrain.maskedclip.text_encoder import TextEncoder

Teacher = Literal["stop_gradient", "ema"]


class MaskedCLIP(nn.Module):
    """Image encoder E (the first blocks of timm ViT `vit`), bridge B (its last `bridge_depth` blocks + P_I),
    text encoder T (+ P_T), image decoder D_I and feature decoder D_F, with CLIP's learned temperature.

    Terms (our reading of arXiv 2507.17239, docs/MASKEDCLIP.md), each on when its switch/weight is:
      L_MIM  (`mim`): D_I(E(visible patches)) against the per-patch normalised pixels, masked patches, every image.
      L_CLIP (`lambda_clip` > 0): symmetric InfoNCE between P_I(pool(B(E(x)))) and P_T(T(report)), paired
        images (a batch with fewer than 2 has no contrast: the term is left out, not logged).
      L_MKD  (`lambda_mkd` > 0): D_F(E(visible patches)) against B(E(x)) of the full image at the masked
        positions; the target carries no gradient: the online E and B detached (`teacher: stop_gradient`) or
        an exponential moving average of them (`teacher: ema`).

    Args:
        vit, bridge_depth, embed_dim, input_size: see ImageEncoder and Bridge.
        text: TextEncoder keyword arguments (vocab_size, pad_token_id, context_length, text_model, bert, pretrained).
        decoder_width, decoder_depth, decoder_heads: D_I's size (MAE's 512, 8, 16); D_F has the same width and
            heads and `feature_decoder_depth` blocks.
        mkd_target_norm: layer-normalise the distillation target (no affine).
        ema_momentum: the EMA teacher's momentum.
        gather_negatives: under DDP, L_CLIP contrasts the pairs of every process (as CLIP / open_clip do); False:
            each process's own pairs only.
        pairs_per_study: at most this many images of one study take part in a step's L_CLIP (the first ones of
            the batch; the others still take part in L_MIM / L_MKD); None: all. Needs the pairs' keys.
    """

    def __init__(
        self,
        vit: str,
        bridge_depth: int,
        embed_dim: int,
        input_size: int,
        text: dict[str, Any],
        decoder_width: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        feature_decoder_depth: int = 4,
        mim: bool = True,
        lambda_clip: float = 1.0,
        lambda_mkd: float = 1.0,
        teacher: Teacher = "stop_gradient",
        ema_momentum: float = 0.996,
        mkd_target_norm: bool = True,
        gather_negatives: bool = True,
        pairs_per_study: int | None = None,
    ) -> None:
        super().__init__()
        if teacher not in ("stop_gradient", "ema"):
            raise ValueError(f"unknown teacher {teacher!r}; use 'stop_gradient' or 'ema'")
        if pairs_per_study is not None and pairs_per_study < 1:
            raise ValueError(f"pairs_per_study must be >= 1 or null, got {pairs_per_study}")
        if not (mim or lambda_clip > 0 or lambda_mkd > 0):
            raise ValueError("every loss term is switched off: enable mim, lambda_clip or lambda_mkd")
        self.encoder = ImageEncoder(vit, vit_depth(vit) - bridge_depth, input_size)
        self.bridge = Bridge(vit, bridge_depth, embed_dim)
        self.text = TextEncoder(embed_dim, **text)
        width = self.encoder.width
        # a decoder exists only for its term: no weights (or optimizer state) that nothing trains
        self.image_decoder = (
            ImageDecoder(width, self.encoder.patch, decoder_width, decoder_depth, decoder_heads) if mim else None
        )
        self.feature_decoder = (
            FeatureDecoder(width, width, decoder_width, feature_decoder_depth, decoder_heads)
            if lambda_mkd > 0
            else None
        )
        self.teacher = EmaTeacher(self.encoder, self.bridge, ema_momentum) if teacher == "ema" else None
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature 0.07
        self.mim, self.lambda_clip, self.lambda_mkd = mim, lambda_clip, lambda_mkd
        self.mkd_target_norm = mkd_target_norm
        self.clip_loss = ClipLoss(gather_negatives)
        self.pairs_per_study = pairs_per_study

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """After each optimizer step, as open_clip does: the inverse temperature stays in [1, 100]. In place, not
        inside the loss, so the parameter keeps its gradient when it reaches the cap."""
        self.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    def temperature(self) -> torch.Tensor:
        """CLIP's temperature 1 / exp(logit_scale) (what training logs and the export's logit scale implies)."""
        return self.logit_scale.detach().clamp(0, MAX_LOGIT_SCALE).neg().exp()

    def grid_hw(self, input_hw: tuple[int, int]) -> tuple[int, int]:
        return self.encoder.grid_hw(input_hw)

    def encode_image(self, img_b3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Full image -> (CLIP-space tokens B(E(x)) (B, P+N, C), image embedding P_I(pool(.)) (B, embed_dim))."""
        return self._encode_embedded(self.encoder.embed(img_b3HW))

    def _encode_embedded(self, tokens_btc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`encode_image` from the encoder's embedded tokens of the full images."""
        return self.bridge(self.encoder.encode(tokens_btc).stream_btc)

    def forward(
        self,
        img_b3HW: torch.Tensor,
        active_b1hw: torch.Tensor,
        text_ids_bl: torch.Tensor,
        paired_b: torch.Tensor,
        groups_bk: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Normalised images, visible cells (True = visible) on the patch grid, report ids, paired flags and the
        pairs' keys (`ClipLoss`: pairs sharing one are not negatives; None: every other pair is) ->
        dict(loss, loss_mim / loss_clip / loss_mkd for the terms computed, recon_b3HW when L_MIM is on)."""
        grid_hw = tuple(active_b1hw.shape[-2:])
        masked_bn = ~active_b1hw.flatten(1)
        out: dict[str, torch.Tensor] = {}
        # 1. patch + position embedding, once for the masked branch, the CLIP pass and the teacher pass
        embedded_btc = self.encoder.embed(img_b3HW)
        # 2. masked branch, every image: encode the visible patches only (for the decoders: none, no pass)
        decoded = self.mim or self.feature_decoder is not None
        visible = self.encoder.encode(embedded_btc, ~masked_bn) if decoded else None
        loss = img_b3HW.new_zeros((), dtype=torch.float32)
        if self.mim:
            # 3. L_MIM: normalised pixels of the masked patches
            target = patch_target(img_b3HW, self.encoder.patch)
            pred_bnd = self.image_decoder(visible, grid_hw)
            out["loss_mim"] = masked_mse(pred_bnd, target.normalised_bnd, masked_bn)
            out["recon_b3HW"] = self.image_decoder.reconstruction(pred_bnd, img_b3HW, target, masked_bn)
            loss = loss + out["loss_mim"]
        # 4. L_CLIP: full paired images through E and B, their reports through T
        paired_tokens_btc = None
        if self.lambda_clip > 0:
            paired_b = self.clip_rows(paired_b, groups_bk)
            paired_tokens_btc, loss_clip = self._clip_term(embedded_btc, text_ids_bl, paired_b, groups_bk)
            if loss_clip is not None:
                out["loss_clip"] = loss_clip
                loss = loss + self.lambda_clip * loss_clip
        # 5. L_MKD: predicted CLIP-space features at the masked positions against the full image's
        if self.feature_decoder is not None:
            teacher_btc = self._teacher_tokens(img_b3HW, embedded_btc, paired_b, paired_tokens_btc)
            target_bnc = distillation_target(teacher_btc[:, self.encoder.num_prefix_tokens :], self.mkd_target_norm)
            out["loss_mkd"] = masked_mse(self.feature_decoder(visible, grid_hw), target_bnc, masked_bn)
            loss = loss + self.lambda_mkd * out["loss_mkd"]
        out["loss"] = loss
        return out

    def clip_rows(self, paired_b: torch.Tensor, groups_bk: torch.Tensor | None) -> torch.Tensor:
        """The paired rows that enter L_CLIP: all, or the first `pairs_per_study` of each study (`groups_bk`'s
        last column)."""
        if self.pairs_per_study is None or groups_bk is None:
            return paired_b
        study_b = groups_bk.reshape(paired_b.shape[0], -1)[:, -1]
        same_bb = (study_b[:, None] == study_b[None, :]) & paired_b[None, :]
        earlier_b = torch.tril(same_bb, diagonal=-1).sum(1)  # paired rows of the same study before this one
        return paired_b & (earlier_b < self.pairs_per_study)

    def _clip_term(
        self,
        embedded_btc: torch.Tensor,
        text_ids_bl: torch.Tensor,
        paired_b: torch.Tensor,
        groups_bk: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(The paired images' CLIP-space tokens, L_CLIP), each None when absent. L_CLIP needs 2 pairs (one pair
        alone has no negative), counted over every DDP process when `gather_negatives` (then every process takes
        part in the exchange, with or without pairs of its own)."""
        n_paired = int(paired_b.sum())
        counts = self.clip_loss.counts(n_paired, embedded_btc.device)
        if sum(counts) < 2:
            return None, None
        tokens_btc = None
        img_pd = txt_pd = embedded_btc.new_zeros((0, self.bridge.proj.out_features), dtype=torch.float32)
        if n_paired:
            tokens_btc, img_pd = self._encode_embedded(embedded_btc[paired_b])
            txt_pd = self.text(text_ids_bl[paired_b])
        groups = None if groups_bk is None else groups_bk[paired_b]
        return tokens_btc, self.clip_loss(img_pd, txt_pd, self.logit_scale, groups=groups, counts=counts)

    @torch.no_grad()
    def _teacher_tokens(
        self,
        img_b3HW: torch.Tensor,
        embedded_btc: torch.Tensor,
        paired_b: torch.Tensor,
        paired_tokens_btc: torch.Tensor | None,
    ) -> torch.Tensor:
        """B(E(x)) of the full images, without gradient. Stop-gradient teacher: the paired images' tokens come
        from the CLIP pass (detached), the others from a gradient-free pass over the online embedding."""
        if self.teacher is not None:
            return self.teacher(img_b3HW)
        if paired_tokens_btc is None:
            return self._encode_embedded(embedded_btc)[0]
        tokens_btc = torch.empty(
            (img_b3HW.shape[0], *paired_tokens_btc.shape[1:]), dtype=paired_tokens_btc.dtype, device=img_b3HW.device
        )
        tokens_btc[paired_b] = paired_tokens_btc.detach()
        if not bool(paired_b.all()):
            tokens_btc[~paired_b] = self._encode_embedded(embedded_btc[~paired_b])[0].to(tokens_btc.dtype)
        return tokens_btc

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the blocks of E, B and T in the backward pass instead of keeping their activations."""
        self.encoder.grad_checkpointing = self.bridge.grad_checkpointing = enable
        if enable:
            self.text.tower.set_grad_checkpointing(True)

    def update_teacher(self) -> None:
        """After an optimizer step: move the EMA teacher (a no-op for the stop-gradient one)."""
        if self.teacher is not None:
            self.teacher.update(self.encoder, self.bridge)
