"""Densify the sparse encoder features and decode them to an image with a light UNet-style decoder."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

from pretrain.sparse_layers import MaskContext
from pretrain.sparse_norm import SparseBatchNorm2d, SparseLayerNorm


def _batch_norm(channels: int, sync_bn: bool) -> nn.Module:
    # SparseBatchNorm2d without a mask context is a BatchNorm whose sync also works on CPU (gloo).
    return SparseBatchNorm2d(channels, ctx=None, sync=True) if sync_bn else nn.BatchNorm2d(channels)


class Densify(nn.Module):
    """Per encoder level: norm (active positions only) -> fill masked positions with a learned mask token
    -> 1x1 projection to the decoder width of that level.

    Args:
        in_channels: encoder channels per level, coarse to fine.
        out_channels: decoder widths per level, coarse to fine.
        norm: "batch" or "layer", as the encoder's own normalisation (SparK does the same).
        sync_bn: all-reduce BatchNorm statistics over processes.
    """

    def __init__(
        self, in_channels: Sequence[int], out_channels: Sequence[int], norm: str = "batch", sync_bn: bool = False
    ) -> None:
        super().__init__()
        if len(in_channels) != len(out_channels):
            raise ValueError(f"{len(in_channels)} encoder levels but {len(out_channels)} decoder widths")
        if norm not in ("batch", "layer"):
            raise ValueError(f"norm must be 'batch' or 'layer', got {norm!r}")
        self.mask_context = MaskContext()
        ctx = self.mask_context
        self.norms = nn.ModuleList(
            SparseBatchNorm2d(c, ctx=ctx, sync=sync_bn)
            if norm == "batch"
            else SparseLayerNorm(c, channels_last=False, ctx=ctx)
            for c in in_channels
        )
        self.mask_tokens = nn.ParameterList(nn.Parameter(torch.zeros(1, c, 1, 1)) for c in in_channels)
        for token in self.mask_tokens:
            nn.init.trunc_normal_(token, std=0.02)
        self.projs = nn.ModuleList(
            nn.Conv2d(c, d, kernel_size=1) for c, d in zip(in_channels, out_channels, strict=True)
        )

    def forward(self, feats_bchw: Sequence[torch.Tensor], active_b1hw: torch.Tensor) -> list[torch.Tensor]:
        """`feats_bchw`: sparse features coarse to fine; `active_b1hw`: bool mask on the coarsest grid."""
        dense = []
        with self.mask_context.activate(active_b1hw):
            for feat_bchw, norm, token_1c11, proj in zip(
                feats_bchw, self.norms, self.mask_tokens, self.projs, strict=True
            ):
                feat_bchw = norm(feat_bchw)
                active = self.mask_context.active(tuple(feat_bchw.shape[-2:]), torch.bool)
                feat_bchw = torch.where(active, feat_bchw, token_1c11.to(feat_bchw.dtype))
                dense.append(proj(feat_bchw))
        return dense


class ConvBNReLU(nn.Sequential):
    """3x3 conv -> BatchNorm -> ReLU at constant resolution."""

    def __init__(self, cin: int, cout: int, sync_bn: bool = False) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),
            _batch_norm(cout, sync_bn),
            nn.ReLU(inplace=True),
        )


class UNetBlock(nn.Module):
    """x2 upsampling (transposed conv, cin -> cout), add the skip of that resolution, 3x3 conv-BN-ReLU."""

    def __init__(self, cin: int, cout: int, sync_bn: bool = False) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2)
        self.conv = ConvBNReLU(cout, cout, sync_bn)

    def forward(self, x_bchw: torch.Tensor, skip_bchw: torch.Tensor) -> torch.Tensor:
        return self.conv(self.up(x_bchw) + skip_bchw)


class LightDecoder(nn.Module):
    """Light UNet-style decoder: from the coarsest level up, each block upsamples x2, adds the skip of the
    next finer level and convolves; a pixel head turns the finest map (stride 4) into the image.

    The pixel head is a 1x1 conv to `out_channels * head_upsample**2` channels and a pixel shuffle, so each
    position of the finest level predicts its own 4x4 pixels, like MAE's linear patch head. SparK decodes
    with two more conv stages at strides 2 and 1; at those resolutions convolutions cost the most and add
    little to a target normalised per 32x32 patch.

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
        self.blocks = nn.ModuleList(UNetBlock(cin, cout, sync_bn) for cin, cout in pairwise(widths))
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
