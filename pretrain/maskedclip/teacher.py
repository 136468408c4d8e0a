"""The EMA teacher: a moving average of the image encoder and bridge, the other target source for L_MKD."""

from __future__ import annotations

import copy

import torch
from torch import nn

from pretrain.maskedclip.bridge import Bridge
from pretrain.maskedclip.image_encoder import ImageEncoder


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
        tokens_btc, _ = self.bridge(self.encoder(img_b3HW).stream_btc)
        return tokens_btc
