"""D_F: the feature decoder, predicting the bridge's CLIP-space features of the full image from the visible tokens."""

from __future__ import annotations

import torch
from torch import nn

from pretrain.maskedclip.image_encoder import VisibleTokens
from pretrain.maskedclip.token_decoder import MaskedTokenDecoder


class FeatureDecoder(nn.Module):
    """Predicts, at every patch position, the bridge's output token there for the unmasked image (width
    `feature_dim`); the distillation loss reads the masked positions only."""

    def __init__(self, in_dim: int, feature_dim: int, width: int = 512, depth: int = 4, num_heads: int = 16) -> None:
        super().__init__()
        self.decoder = MaskedTokenDecoder(in_dim, width, depth, num_heads, out_dim=feature_dim)

    def forward(self, visible: VisibleTokens, grid_hw: tuple[int, int]) -> torch.Tensor:
        """-> predicted CLIP-space features (B, N, feature_dim)."""
        return self.decoder(visible, grid_hw)
