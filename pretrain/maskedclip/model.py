"""MaskedCLIP's five modules and its objective: L = L_MIM + lambda_clip * L_CLIP + lambda_mkd * L_MKD.

Mask polarity, everywhere in pretrain/maskedclip: True = visible (`visible_b1hw`, `visible_bn`), as the masking
samplers' `active` maps (pretrain.masking) and the encoder's input; the losses average over the positions that
are not visible.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from pretrain.maskedclip.bridge import Bridge
from pretrain.maskedclip.config import DecoderCfg, LossCfg, TextCfg, VisionCfg
from pretrain.maskedclip.feature_decoder import FeatureDecoder
from pretrain.maskedclip.image_decoder import ImageDecoder, patch_target
from pretrain.maskedclip.image_encoder import ImageEncoder, VisibleTokens, vit_depth
from pretrain.maskedclip.losses import MAX_LOGIT_SCALE, ClipLoss, masked_mse
from pretrain.maskedclip.teacher import build_teacher, distillation_target
from pretrain.maskedclip.text_encoder import TextEncoder
from pretrain.maskedclip.tokenizer import ReportTokenizer

LOSS_TERMS = ("loss_mim", "loss_clip", "loss_mkd")


class ClipPass(NamedTuple):
    """The paired rows that entered L_CLIP, their CLIP-space tokens B(E(x)) (None: no pass) and L_CLIP (None: no
    contrast this step, or the term off)."""

    rows_b: torch.Tensor
    tokens_btc: torch.Tensor | None
    loss: torch.Tensor | None


class MaskedCLIP(nn.Module):
    """Image encoder E (the first blocks of timm ViT `vision.vit`), bridge B (its last `vision.bridge_depth`
    blocks + P_I), text encoder T (+ P_T), image decoder D_I and feature decoder D_F, with CLIP's learned
    temperature.

    Terms (our reading of arXiv 2507.17239, docs/MASKEDCLIP.md), each on when its switch/weight is (`LossCfg`):
      L_MIM  (`mim`): D_I(E(visible patches)) against the per-patch normalised pixels, masked patches, every image.
      L_CLIP (`lambda_clip` > 0): symmetric InfoNCE between P_I(pool(B(E(x)))) and P_T(T(report)), paired
        images (a step with fewer than 2 has no contrast: the term is left out, not logged).
      L_MKD  (`lambda_mkd` > 0): D_F(E(visible patches)) against B(E(x)) of the full image at the masked
        positions; the target carries no gradient (teacher.py).

    Args:
        embed_dim: the joint image-text space's width.
        vision, text, decoders, losses: the groups of config.py (dicts are accepted: a checkpoint's).
        tokenizer: the reports' tokenizer (its vocabulary sizes T's table); None: `ReportTokenizer(text.model,
            text.context_length)`.
    """

    def __init__(
        self,
        embed_dim: int,
        vision: VisionCfg,
        text: TextCfg,
        decoders: DecoderCfg | None = None,
        losses: LossCfg | None = None,
        tokenizer: ReportTokenizer | None = None,
    ) -> None:
        super().__init__()
        decoders, losses = decoders or DecoderCfg(), losses or LossCfg()
        if losses.pairs_per_study is not None and losses.pairs_per_study < 1:
            raise ValueError(f"pairs_per_study must be >= 1 or null, got {losses.pairs_per_study}")
        if not (losses.mim or losses.lambda_clip > 0 or losses.lambda_mkd > 0):
            raise ValueError("every loss term is switched off: enable mim, lambda_clip or lambda_mkd")
        if losses.teacher not in ("stop_gradient", "ema"):
            raise ValueError(f"unknown teacher {losses.teacher!r}; use 'stop_gradient' or 'ema'")
        tokenizer = tokenizer or ReportTokenizer(text.model, text.context_length)
        self.encoder = ImageEncoder(vision.vit, vit_depth(vision.vit) - vision.bridge_depth, vision.input_size)
        self.bridge = Bridge(vision.vit, vision.bridge_depth, embed_dim)
        self.text = TextEncoder(
            embed_dim,
            tokenizer.vocab_size,
            tokenizer.pad_token_id,
            text.context_length,
            text_model=text.model,
            bert=text.bert,
            pretrained=text.pretrained,
        )
        width = self.encoder.width
        # a decoder exists only for its term: no weights (or optimizer state) that nothing trains
        self.image_decoder = (
            ImageDecoder(width, self.encoder.patch, decoders.width, decoders.depth, decoders.heads)
            if losses.mim
            else None
        )
        self.feature_decoder = (
            FeatureDecoder(width, width, decoders.width, decoders.feature_depth, decoders.heads)
            if losses.lambda_mkd > 0
            else None
        )
        self.teacher = build_teacher(losses.teacher, self.encoder, self.bridge, losses.ema_momentum)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature 0.07
        self.clip_loss = ClipLoss(losses.gather_negatives)
        self.losses = losses
        # each term's weight in L; a term absent from a step (off, or L_CLIP without contrast) adds nothing
        self.weights = {"loss_mim": 1.0, "loss_clip": losses.lambda_clip, "loss_mkd": losses.lambda_mkd}

    # ------------------------------------------------------------------ the objective
    def forward(
        self,
        img_b3HW: torch.Tensor,
        visible_b1hw: torch.Tensor,
        text_ids_bl: torch.Tensor,
        paired_b: torch.Tensor,
        groups_bk: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Normalised images, visible cells of the patch grid (True = visible), report ids, paired flags and the
        pairs' keys (report, study; see `clip_rows` and `ClipLoss`; None: none) ->
        dict(loss = L_MIM + lambda_clip L_CLIP + lambda_mkd L_MKD, each term computed, recon_b3HW with L_MIM)."""
        grid_hw = tuple(visible_b1hw.shape[-2:])
        visible_bn = visible_b1hw.flatten(1)
        embedded_btc = self.encoder.embed(img_b3HW)  # once, for the masked, CLIP and teacher passes
        hidden = self.encode_visible(embedded_btc, visible_bn)
        clip = self.clip_pass(embedded_btc, text_ids_bl, paired_b, groups_bk)
        terms: dict[str, torch.Tensor] = {}
        out: dict[str, torch.Tensor] = {}
        if self.image_decoder is not None:
            terms["loss_mim"], out["recon_b3HW"] = self.mim_term(img_b3HW, hidden, visible_bn, grid_hw)
        if clip.loss is not None:
            terms["loss_clip"] = clip.loss
        if self.feature_decoder is not None:
            target_bnc = self.mkd_target(img_b3HW, embedded_btc, clip)
            terms["loss_mkd"] = masked_mse(self.feature_decoder(hidden, grid_hw), target_bnc, visible_bn)
        return {"loss": self.objective(terms, img_b3HW), **terms, **out}

    def objective(self, terms: dict[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """L = sum of the present terms, each times its weight (L_MIM's is 1)."""
        loss = like.new_zeros((), dtype=torch.float32)
        for name in LOSS_TERMS:
            if name in terms:
                loss = loss + self.weights[name] * terms[name]
        return loss

    # ------------------------------------------------------------------ the terms
    def encode_visible(self, embedded_btc: torch.Tensor, visible_bn: torch.Tensor) -> VisibleTokens | None:
        """E over the visible patches only, for the decoders (None: no decoder, no pass)."""
        if self.image_decoder is None and self.feature_decoder is None:
            return None
        return self.encoder.encode(embedded_btc, visible_bn)

    def mim_term(
        self, img_b3HW: torch.Tensor, hidden: VisibleTokens, visible_bn: torch.Tensor, grid_hw: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_MIM: D_I's prediction against the normalised pixels of the masked patches, the reconstruction)."""
        target = patch_target(img_b3HW, self.encoder.patch)
        pred_bnd = self.image_decoder(hidden, grid_hw)
        loss = masked_mse(pred_bnd, target.normalised_bnd, visible_bn)
        return loss, self.image_decoder.reconstruction(pred_bnd, img_b3HW, target, visible_bn)

    def clip_pass(
        self,
        embedded_btc: torch.Tensor,
        text_ids_bl: torch.Tensor,
        paired_b: torch.Tensor,
        groups_bk: torch.Tensor | None,
    ) -> ClipPass:
        """L_CLIP over the rows `clip_rows` keeps: their full images through E and B, their reports through T.
        L_CLIP needs 2 pairs (one alone has no negative), counted over every DDP process when `gather_negatives`
        (then every process takes part in the exchange, with or without pairs of its own)."""
        if self.losses.lambda_clip <= 0:
            return ClipPass(paired_b, None, None)
        rows_b = self.clip_rows(paired_b, groups_bk)
        n_rows = int(rows_b.sum())
        counts = self.clip_loss.contrast_counts(n_rows, embedded_btc.device)
        if counts is None:
            return ClipPass(rows_b, None, None)
        tokens_btc = None
        img_pd = txt_pd = embedded_btc.new_zeros((0, self.bridge.proj.out_features), dtype=torch.float32)
        if n_rows:
            tokens_btc, img_pd = self._encode_embedded(embedded_btc[rows_b])
            txt_pd = self.text(text_ids_bl[rows_b])
        # pairs sharing a key are not each other's negatives (`mask_related_pairs`)
        groups = groups_bk[rows_b] if groups_bk is not None and self.losses.mask_related_pairs else None
        loss = self.clip_loss(img_pd, txt_pd, self.logit_scale, groups=groups, counts=counts)
        return ClipPass(rows_b, tokens_btc, loss)

    def clip_rows(self, paired_b: torch.Tensor, groups_bk: torch.Tensor | None) -> torch.Tensor:
        """The paired rows that enter L_CLIP: all, or the first `pairs_per_study` of each study (`groups_bk`'s
        last column)."""
        if self.losses.pairs_per_study is None or groups_bk is None:
            return paired_b
        study_b = groups_bk.reshape(paired_b.shape[0], -1)[:, -1]
        same_bb = (study_b[:, None] == study_b[None, :]) & paired_b[None, :]
        earlier_b = torch.tril(same_bb, diagonal=-1).sum(1)  # paired rows of the same study before this one
        return paired_b & (earlier_b < self.losses.pairs_per_study)

    def mkd_target(self, img_b3HW: torch.Tensor, embedded_btc: torch.Tensor, clip: ClipPass) -> torch.Tensor:
        """L_MKD's target at every patch position (B, N, C): the teacher's full-image tokens, prefix dropped."""
        tokens_btc = self.teacher.tokens(img_b3HW, embedded_btc, self._tokens_embedded, clip.rows_b, clip.tokens_btc)
        return distillation_target(tokens_btc[:, self.encoder.num_prefix_tokens :], self.losses.mkd_target_norm)

    # ------------------------------------------------------------------ the towers
    def grid_hw(self, input_hw: tuple[int, int]) -> tuple[int, int]:
        return self.encoder.grid_hw(input_hw)

    def encode_image(self, img_b3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Full image -> (CLIP-space tokens B(E(x)) (B, P+N, C), image embedding P_I(pool(.)) (B, embed_dim))."""
        return self._encode_embedded(self.encoder.embed(img_b3HW))

    def _encode_embedded(self, tokens_btc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`encode_image` from the encoder's embedded tokens of the full images."""
        return self.bridge(self.encoder.stream(tokens_btc))

    def _tokens_embedded(self, tokens_btc: torch.Tensor) -> torch.Tensor:
        """B(E(x)) alone from the embedded tokens of the full images: the teacher's pass (no pooling, no P_I)."""
        return self.bridge.tokens(self.encoder.stream(tokens_btc))

    # ------------------------------------------------------------------ after each optimizer step, options
    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """After each optimizer step, as open_clip does: the inverse temperature stays in [1, 100]. In place, not
        inside the loss, so the parameter keeps its gradient when it reaches the cap."""
        self.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    def temperature(self) -> torch.Tensor:
        """CLIP's temperature 1 / exp(logit_scale) (what training logs and the export's logit scale implies)."""
        return self.logit_scale.detach().clamp(0, MAX_LOGIT_SCALE).neg().exp()

    def update_teacher(self) -> None:
        """After an optimizer step: move the EMA teacher (a no-op for the stop-gradient one)."""
        self.teacher.update(self.encoder, self.bridge)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the blocks of E, B and T in the backward pass instead of keeping their activations."""
        self.encoder.grad_checkpointing = self.bridge.grad_checkpointing = enable
        if enable:
            self.text.tower.set_grad_checkpointing(True)
