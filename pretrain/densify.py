"""Densify the sparse encoder features: per level a norm over active positions, a learned mask token at the
masked positions, and a projection to the decoder's width of that level (SparK's `densify_*` layers)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pretrain.sparse_layers import MaskContext
from pretrain.sparse_norm import SparseBatchNorm2d, SparseLayerNorm


def _projection(cin: int, cout: int, kernel_size: int) -> nn.Module:
    if kernel_size == 0:
        return nn.Identity()
    return nn.Conv2d(cin, cout, kernel_size=kernel_size, padding=kernel_size // 2)


def spark_kernel_sizes(in_channels: Sequence[int], out_channels: Sequence[int]) -> list[int]:
    """SparK's projections, coarse to fine: 1x1 at the coarsest level (none at all when the widths already
    agree, as for ConvNeXt-S: 768 = 768), 3x3 at the finer levels. 0 stands for "no projection"."""
    coarsest = 0 if in_channels[0] == out_channels[0] else 1
    return [coarsest] + [3] * (len(in_channels) - 1)


class Densify(nn.Module):
    """Per encoder level: norm (active positions only) -> fill masked positions with a learned mask token
    -> projection to the decoder width of that level.

    Args:
        in_channels: encoder channels per level, coarse to fine.
        out_channels: decoder widths per level, coarse to fine.
        kernel_sizes: projection kernel per level (0: identity; needs equal widths); default all 1x1.
        norm: "batch" or "layer", as the encoder's own normalisation (SparK does the same).
        sync_bn: all-reduce BatchNorm statistics over processes.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: Sequence[int],
        kernel_sizes: Sequence[int] | None = None,
        norm: str = "batch",
        sync_bn: bool = False,
    ) -> None:
        super().__init__()
        kernel_sizes = [1] * len(in_channels) if kernel_sizes is None else list(kernel_sizes)
        if not len(in_channels) == len(out_channels) == len(kernel_sizes):
            raise ValueError(
                f"{len(in_channels)} encoder levels, {len(out_channels)} decoder widths, {len(kernel_sizes)} kernels"
            )
        if norm not in ("batch", "layer"):
            raise ValueError(f"norm must be 'batch' or 'layer', got {norm!r}")
        if any(k == 0 and c != d for c, d, k in zip(in_channels, out_channels, kernel_sizes, strict=True)):
            raise ValueError("an identity projection (kernel 0) needs equal encoder and decoder widths")
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
            nn.init.trunc_normal_(token, std=0.02, a=-0.02, b=0.02)  # SparK: truncated at one std
        self.projs = nn.ModuleList(
            _projection(c, d, k) for c, d, k in zip(in_channels, out_channels, kernel_sizes, strict=True)
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
