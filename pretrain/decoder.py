"""SparK's decoder: a UNet-style stack of x2 upsampling blocks from the coarsest level to full resolution.

The densified level of each resolution is added before the block that upsamples it, and a 1x1 convolution
turns the full-resolution map into the image (SparK `pretrain/decoder.py`, `LightDecoder`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

from pretrain.sparse_norm import SparseBatchNorm2d


def batch_norm(channels: int, sync_bn: bool) -> nn.Module:
    """A dense BatchNorm; with `sync_bn`, SparseBatchNorm2d without a mask context: a BatchNorm whose
    all-reduce also works on CPU (gloo)."""
    return SparseBatchNorm2d(channels, ctx=None, sync=True) if sync_bn else nn.BatchNorm2d(channels)


def decoder_widths(width: int, n_levels: int, minimum: int = 1) -> list[int]:
    """`width` halved at each finer level (SparK: 768, 384, 192, ...), never below `minimum`."""
    return [max(width // 2**i, minimum) for i in range(n_levels)]


class UNetBlock(nn.Sequential):
    """x2 upsampling: transposed conv (k4 s2, cin -> cin), 3x3 conv-BN-ReLU6 (cin -> cin), 3x3 conv-BN
    (cin -> cout)."""

    def __init__(self, cin: int, cout: int, sync_bn: bool = False) -> None:
        super().__init__(
            nn.ConvTranspose2d(cin, cin, kernel_size=4, stride=2, padding=1),
            nn.Conv2d(cin, cin, kernel_size=3, padding=1, bias=False),
            batch_norm(cin, sync_bn),
            nn.ReLU6(inplace=True),
            nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),
            batch_norm(cout, sync_bn),
        )


class SparkDecoder(nn.Module):
    """SparK's decoder: log2(`upsample`) UNet blocks from the coarsest level up to full resolution, widths
    `width` halving per block, then a 1x1 conv to `out_channels`.

    Args:
        upsample: stride of the coarsest level (the encoder's downsample ratio, 32).
        width: channels entering the first block (SparK: 768); the densified levels must have the widths of
            `decoder_widths(width, n_levels)`.
        out_channels: image channels of the reconstruction.
        sync_bn: all-reduce BatchNorm statistics over processes.
    """

    def __init__(self, upsample: int = 32, width: int = 768, out_channels: int = 3, sync_bn: bool = False) -> None:
        super().__init__()
        n_blocks = round(math.log2(upsample))
        if 2**n_blocks != upsample:
            raise ValueError(f"upsample must be a power of 2, got {upsample}")
        if width // 2**n_blocks < 1:
            raise ValueError(f"width {width} cannot be halved {n_blocks} times")
        self.widths = decoder_widths(width, n_blocks + 1)
        self.blocks = nn.ModuleList(UNetBlock(cin, cout, sync_bn) for cin, cout in pairwise(self.widths))
        self.proj = nn.Conv2d(self.widths[-1], out_channels, kernel_size=1)
        self._init_weights()

    def _init_weights(self) -> None:
        # SparK's LightDecoder.initialize: convs truncated normal (std .02), transposed convs Kaiming (fan-out)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.02)
            elif isinstance(m, nn.ConvTranspose2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, skips_bchw: Sequence[torch.Tensor]) -> torch.Tensor:
        """`skips_bchw`: densified levels coarse to fine (widths `self.widths[:len]`) -> image (B,3,H,W)."""
        if not 0 < len(skips_bchw) <= len(self.blocks):
            raise ValueError(f"expected 1 to {len(self.blocks)} levels, got {len(skips_bchw)}")
        x_bchw = skips_bchw[0]
        for i, block in enumerate(self.blocks):
            if 0 < i < len(skips_bchw):
                x_bchw = x_bchw + skips_bchw[i]  # the level of this resolution, added before upsampling it
            x_bchw = block(x_bchw)
        return self.proj(x_bchw)
