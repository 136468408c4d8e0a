"""A plain ViT's single-stride features as a four-level pyramid (strides 4, 8, 16, 32) for the UNet decoder.

The neck of BEiT's and MAE's semantic segmentation (their `fpn1..fpn4`): the outputs of four blocks of the ViT,
as (B, C, H/16, W/16) grids (timm's `features_only` for ViTs, `forward_intermediates`), are upsampled x4 (two
stride-2 transposed convolutions with BatchNorm + GELU between), x2 (one), kept, and max-pooled to x1/2
(microsoft/unilm beit/semantic_segmentation/backbone/beit.py; mmseg's Feature2Pyramid, rescales 4, 2, 1, 0.5).
The blocks are BEiT's out_indices 3, 5, 7, 11 of ViT-B's 12, scaled to other depths (`vit_levels`). The block
outputs are taken before the ViT's final norm, as in BEiT.
"""

from __future__ import annotations

import torch
from torch import nn

STRIDE_FACTORS = (4, 2, 1, 0.5)  # each level's resolution relative to the ViT's patch grid


BEIT_LEVELS = (4 / 12, 6 / 12, 8 / 12, 12 / 12)  # BEiT's blocks 3, 5, 7, 11 (0-based) as fractions of 12


def vit_levels(depth: int) -> tuple[int, ...]:
    """Indices of the four blocks (0-based) whose outputs form the pyramid: BEiT's for 12 blocks, scaled to `depth`
    (round(depth x f) - 1), the last block last."""
    if depth < 4:
        raise ValueError(f"a four-level pyramid needs a ViT of at least 4 blocks, got {depth}")
    return tuple(round(depth * fraction) - 1 for fraction in BEIT_LEVELS)


class SimplePyramid(nn.Module):
    """Four (B, C, h, w) patch-grid maps -> (B, C, 4h, 4w), (B, C, 2h, 2w), (B, C, h, w), (B, C, h/2, w/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()

        def up() -> nn.ConvTranspose2d:
            return nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2)

        self.levels = nn.ModuleList(
            [
                nn.Sequential(up(), nn.BatchNorm2d(channels), nn.GELU(), up()),
                up(),
                nn.Identity(),
                nn.MaxPool2d(kernel_size=2, stride=2),
            ]
        )

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [level(x) for level, x in zip(self.levels, feats, strict=True)]
