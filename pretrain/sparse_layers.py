"""Masked ("sparse") versions of the dense layers of a convnet, and the mask context they share.

SparK simulates sparse convolution with dense layers: every layer that mixes or moves spatial positions
re-zeroes its output at masked positions, so masked positions stay exactly zero at every resolution and
nothing computed there reaches an active position. Each layer keeps the parameter names of the dense layer
it replaces, so state dicts stay those of the timm model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class MaskContext:
    """The active (visible) cells of the forward pass in progress, shared by one model's sparse layers.

    An encoder owns one context and activates it for the duration of its forward pass; its sparse layers
    hold a reference and ask it for the mask at their own resolution. It is not re-entrant: one forward
    pass at a time per context (DDP runs one model copy per process, which is fine).
    """

    def __init__(self) -> None:
        self._active_b1hw: torch.Tensor | None = None
        self._cache: dict[tuple, torch.Tensor] = {}

    @contextmanager
    def activate(self, active_b1hw: torch.Tensor) -> Iterator[None]:
        """Make `active_b1hw` (bool (B,1,h,w), True = visible) the mask of every sparse layer in the block."""
        if self._active_b1hw is not None:
            raise RuntimeError("MaskContext is already active: one forward pass at a time per model")
        if active_b1hw.dim() != 4 or active_b1hw.shape[1] != 1 or active_b1hw.dtype != torch.bool:
            raise ValueError(
                f"active mask must be a bool tensor (B,1,h,w), got {active_b1hw.dtype} {tuple(active_b1hw.shape)}"
            )
        self._active_b1hw = active_b1hw
        try:
            yield
        finally:
            self._active_b1hw = None
            self._cache.clear()

    @property
    def is_active(self) -> bool:
        return self._active_b1hw is not None

    def _grid(self) -> torch.Tensor:
        if self._active_b1hw is None:
            raise RuntimeError("a sparse layer ran outside an active MaskContext; call the encoder with a mask")
        return self._active_b1hw

    def _scale(self, hw: tuple[int, int]) -> tuple[int, int]:
        grid = self._grid()
        h, w = grid.shape[-2:]
        if hw[0] % h or hw[1] % w:
            raise ValueError(
                f"feature map {hw} is not a whole multiple of the mask grid {(h, w)}; "
                "input sizes must be multiples of the encoder's downsample ratio"
            )
        return hw[0] // h, hw[1] // w

    def active(self, hw: tuple[int, int], dtype: torch.dtype, channels_last: bool = False) -> torch.Tensor:
        """The mask upsampled (nearest) to `hw`: (B,1,H,W), or (B,H,W,1) when `channels_last`, in `dtype`."""
        key = ("active", hw[0], hw[1], dtype, channels_last)
        if key not in self._cache:
            sy, sx = self._scale(hw)
            mask = self._grid().repeat_interleave(sy, dim=2).repeat_interleave(sx, dim=3).to(dtype)
            self._cache[key] = mask.permute(0, 2, 3, 1) if channels_last else mask
        return self._cache[key]

    def count(self, hw: tuple[int, int]) -> torch.Tensor:
        """Number of active positions at resolution `hw` over the whole batch (float32 scalar tensor)."""
        key = ("count", hw[0], hw[1])
        if key not in self._cache:
            sy, sx = self._scale(hw)
            self._cache[key] = self._grid().sum().to(torch.float32) * float(sy * sx)
        return self._cache[key]


class SparseConv2d(nn.Conv2d):
    """`nn.Conv2d` whose output is zero at masked positions."""

    def __init__(self, *args, ctx: MaskContext, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ctx = ctx

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, ctx: MaskContext) -> SparseConv2d:
        sparse = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            ctx=ctx,
            device="meta",
        )
        sparse.weight, sparse.bias = conv.weight, conv.bias  # the same Parameter objects, names unchanged
        return sparse

    def forward(self, x_bchw: torch.Tensor) -> torch.Tensor:
        y_bchw = super().forward(x_bchw)
        return y_bchw.mul_(self.ctx.active(y_bchw.shape[-2:], y_bchw.dtype))


class SparseLinear(nn.Linear):
    """`nn.Linear` applied to a channels-last map (B,H,W,C) (a pointwise conv), zero at masked positions."""

    def __init__(self, *args, ctx: MaskContext, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ctx = ctx

    @classmethod
    def from_dense(cls, linear: nn.Linear, ctx: MaskContext) -> SparseLinear:
        sparse = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, ctx=ctx, device="meta")
        sparse.weight, sparse.bias = linear.weight, linear.bias
        return sparse

    def forward(self, x_bhwc: torch.Tensor) -> torch.Tensor:
        if x_bhwc.dim() != 4:
            raise ValueError(f"SparseLinear expects a channels-last map (B,H,W,C), got shape {tuple(x_bhwc.shape)}")
        y_bhwc = super().forward(x_bhwc)
        return y_bhwc.mul_(self.ctx.active(y_bhwc.shape[1:3], y_bhwc.dtype, channels_last=True))


class SparseMaxPool2d(nn.MaxPool2d):
    """`nn.MaxPool2d` whose output is zero at masked positions."""

    def __init__(self, *args, ctx: MaskContext, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ctx = ctx

    @classmethod
    def from_dense(cls, pool: nn.MaxPool2d, ctx: MaskContext) -> SparseMaxPool2d:
        return cls(pool.kernel_size, pool.stride, pool.padding, pool.dilation, ceil_mode=pool.ceil_mode, ctx=ctx)

    def forward(self, x_bchw: torch.Tensor) -> torch.Tensor:
        y_bchw = super().forward(x_bchw)
        return y_bchw.mul_(self.ctx.active(y_bchw.shape[-2:], y_bchw.dtype))


class SparseAvgPool2d(nn.AvgPool2d):
    """`nn.AvgPool2d` whose output is zero at masked positions."""

    def __init__(self, *args, ctx: MaskContext, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ctx = ctx

    @classmethod
    def from_dense(cls, pool: nn.AvgPool2d, ctx: MaskContext) -> SparseAvgPool2d:
        return cls(
            pool.kernel_size,
            pool.stride,
            pool.padding,
            ceil_mode=pool.ceil_mode,
            count_include_pad=pool.count_include_pad,
            divisor_override=pool.divisor_override,
            ctx=ctx,
        )

    def forward(self, x_bchw: torch.Tensor) -> torch.Tensor:
        y_bchw = super().forward(x_bchw)
        return y_bchw.mul_(self.ctx.active(y_bchw.shape[-2:], y_bchw.dtype))
