"""A lighter decoder (an option, not SparK's): UNet blocks up to stride 4, then a pixel-shuffle head."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

from pretrain.decoder import batch_norm


class ConvBNReLU(nn.Sequential):
    """3x3 conv -> BatchNorm -> ReLU at constant resolution."""

    def __init__(self, cin: int, cout: int, sync_bn: bool = False) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False), batch_norm(cout, sync_bn), nn.ReLU(inplace=True)
        )


class ShuffleBlock(nn.Module):
    """x2 upsampling (transposed conv k2 s2, cin -> cout), add the skip of that resolution, 3x3 conv-BN-ReLU."""

    def __init__(self, cin: int, cout: int, sync_bn: bool = False) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2)
        self.conv = ConvBNReLU(cout, cout, sync_bn)

    def forward(self, x_bchw: torch.Tensor, skip_bchw: torch.Tensor) -> torch.Tensor:
        return self.conv(self.up(x_bchw) + skip_bchw)


class PixelShuffleDecoder(nn.Module):
    """From the coarsest level up, each block upsamples x2, adds the skip of the next finer level and
    convolves; a pixel head turns the finest map (stride 4) into the image.

    The pixel head is a 1x1 conv to `out_channels * head_upsample**2` channels and a pixel shuffle, so each
    position of the finest level predicts its own 4x4 pixels, like MAE's linear patch head. SparK's decoder
    (`pretrain.decoder.SparkDecoder`) has two more blocks at strides 2 and 1, where convolutions cost the most.

    Args:
        widths: channels per level, coarse to fine (the densified skips have these widths).
        head_upsample: stride of the finest level (4 for ResNets and ConvNeXts).
        out_channels: image channels of the reconstruction.
        sync_bn: all-reduce BatchNorm statistics over processes.
    """

    def __init__(
        self, widths: Sequence[int], head_upsample: int = 4, out_channels: int = 3, sync_bn: bool = False
    ) -> None:
        super().__init__()
        self.widths = list(widths)
        self.blocks = nn.ModuleList(ShuffleBlock(cin, cout, sync_bn) for cin, cout in pairwise(widths))
        self.head = nn.Conv2d(widths[-1], out_channels * head_upsample**2, kernel_size=1)
        self.pixel_shuffle = nn.PixelShuffle(head_upsample)

    def forward(self, skips_bchw: Sequence[torch.Tensor]) -> torch.Tensor:
        """`skips_bchw`: dense features coarse to fine, with `widths` channels -> image (B,3,H,W)."""
        if len(skips_bchw) != len(self.widths):
            raise ValueError(f"expected {len(self.widths)} levels, got {len(skips_bchw)}")
        x_bchw = skips_bchw[0]
        for block, skip_bchw in zip(self.blocks, skips_bchw[1:], strict=True):
            x_bchw = block(x_bchw, skip_bchw)
        return self.pixel_shuffle(self.head(x_bchw))
