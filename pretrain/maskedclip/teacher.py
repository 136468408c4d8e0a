"""L_MKD's target: the CLIP-space tokens B(E(x)) of the full image, without gradient, from the online E and B
detached (`StopGradientTeacher`) or from an exponential moving average of them (`EmaTeacher`), then optionally
layer-normalised (`distillation_target`)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.maskedclip.bridge import Bridge
from pretrain.maskedclip.image_encoder import ImageEncoder

# the online E then B from the encoder's embedded tokens: (B, P+N, C) -> CLIP-space tokens (B, P+N, C)
OnlineTokens = Callable[[torch.Tensor], torch.Tensor]


def distillation_target(tokens_bnc: torch.Tensor, normalise: bool) -> torch.Tensor:
    """The feature-distillation target: the teacher's tokens, each layer-normalised without affine parameters
    when `normalise` (as MaskFeat / data2vec do with feature targets), so the target's scale cannot drift."""
    tokens_bnc = tokens_bnc.float()
    return F.layer_norm(tokens_bnc, tokens_bnc.shape[-1:]) if normalise else tokens_bnc


class StopGradientTeacher(nn.Module):
    """The online E and B themselves, detached. It holds no weights (the online ones are passed in): the paired
    images' tokens come from the CLIP pass, which computed them already, the others from a gradient-free pass over
    the online embedding."""

    @torch.no_grad()
    def tokens(
        self,
        img_b3HW: torch.Tensor,
        embedded_btc: torch.Tensor,
        online: OnlineTokens,
        paired_b: torch.Tensor,
        paired_tokens_btc: torch.Tensor | None,
    ) -> torch.Tensor:
        """B(E(x)) of the full images (B, P+N, C), without gradient. `paired_tokens_btc`: the CLIP pass's tokens of
        the rows `paired_b` (None: no CLIP pass)."""
        if paired_tokens_btc is None:
            return online(embedded_btc)
        tokens_btc = torch.empty(
            (img_b3HW.shape[0], *paired_tokens_btc.shape[1:]), dtype=paired_tokens_btc.dtype, device=img_b3HW.device
        )
        tokens_btc[paired_b] = paired_tokens_btc.detach()
        if not bool(paired_b.all()):
            tokens_btc[~paired_b] = online(embedded_btc[~paired_b]).to(tokens_btc.dtype)
        return tokens_btc

    def update(self, encoder: ImageEncoder, bridge: Bridge) -> None:
        """Nothing to move: the online weights are the teacher."""


class EmaTeacher(nn.Module):
    """Frozen copies of E and B, moved towards the online ones after each optimizer step:
    teacher <- momentum * teacher + (1 - momentum) * online (parameters and floating buffers alike).

    Its weights live in the module's state dict, so a resumed run continues with the same teacher.
    """

    def __init__(self, encoder: ImageEncoder, bridge: Bridge, momentum: float) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"ema_momentum must be in [0, 1], got {momentum}")
        self.encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.bridge = copy.deepcopy(bridge).requires_grad_(False)
        self.momentum = momentum

    @torch.no_grad()
    def update(self, encoder: ImageEncoder, bridge: Bridge) -> None:
        for mine, online in ((self.encoder, encoder), (self.bridge, bridge)):
            pairs = zip(mine.state_dict().values(), online.state_dict().values(), strict=True)
            for teacher_t, online_t in pairs:
                if teacher_t.is_floating_point():
                    teacher_t.lerp_(online_t.to(teacher_t.dtype), 1.0 - self.momentum)
                else:
                    teacher_t.copy_(online_t)

    @torch.no_grad()
    def forward(self, img_b3HW: torch.Tensor) -> torch.Tensor:
        """The teacher's CLIP-space tokens of the full image (B, P+N, C)."""
        return self.bridge.tokens(self.encoder.stream(self.encoder.embed(img_b3HW)))

    def tokens(
        self,
        img_b3HW: torch.Tensor,
        embedded_btc: torch.Tensor,
        online: OnlineTokens,
        paired_b: torch.Tensor,
        paired_tokens_btc: torch.Tensor | None,
    ) -> torch.Tensor:
        """`StopGradientTeacher.tokens`' signature; the teacher's own pass over the images (its own embedding)."""
        return self(img_b3HW)


def build_teacher(kind: str, encoder: ImageEncoder, bridge: Bridge, momentum: float) -> nn.Module:
    """`StopGradientTeacher` ("stop_gradient") or `EmaTeacher` ("ema")."""
    if kind == "stop_gradient":
        return StopGradientTeacher()
    if kind == "ema":
        return EmaTeacher(encoder, bridge, momentum)
    raise ValueError(f"unknown teacher {kind!r}; use 'stop_gradient' or 'ema'")
