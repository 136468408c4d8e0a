"""Normalisation layers whose statistics use active (visible) positions only.

`SparseBatchNorm2d` deliberately does not subclass `torch.nn.modules.batchnorm._BatchNorm`:
`nn.SyncBatchNorm.convert_sync_batchnorm` (and Lightning's `Trainer(sync_batchnorm=True)`) would otherwise
swap it for a dense SyncBatchNorm and silently bring the masked positions back into the statistics.
Use its own `sync=True` instead. Parameter and buffer names are those of `nn.BatchNorm2d`, so state dicts
stay timm-compatible.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from pretrain.sparse_layers import MaskContext

_DIMS = (0, 2, 3)


def _all_reduce_sum(tensor: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    summed = tensor.contiguous().clone()
    dist.all_reduce(summed, op=dist.ReduceOp.SUM, group=group)
    return summed


class _ActiveBatchNorm(torch.autograd.Function):
    """Training-mode BatchNorm with statistics over active positions, with a hand-written backward.

    The backward is the usual BatchNorm one restricted to active positions, in a few passes instead of the
    many small ops autograd would record. With `sync`, the per-channel sums (and in the backward the gradient
    sums the input gradient needs) are all-reduced over `group`, as `nn.SyncBatchNorm` does; the weight and
    bias gradients stay this process's own sums (DDP averages them). Sums accumulate in float32 (or wider).
    Returns (y, mean, biased var, count); the statistics are non-differentiable, for the running averages.
    """

    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,
        active: torch.Tensor | None,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        count: torch.Tensor,
        eps: float,
        sync: bool,
        group: dist.ProcessGroup | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        acc = torch.promote_types(x.dtype, torch.float32)  # float32 sums for bf16/fp16 inputs
        xacc = x.to(acc)  # zero at masked positions (the caller's contract), so plain sums are active sums
        sum_c, sumsq_c = xacc.sum(_DIMS), (xacc * xacc).sum(_DIMS)
        if sync:
            packed = _all_reduce_sum(torch.cat([sum_c, sumsq_c, count.reshape(1).to(acc)]), group)
            c = x.shape[1]
            sum_c, sumsq_c, count = packed[:c], packed[c : 2 * c], packed[2 * c]
        n = count.to(acc).clamp_min(1.0)
        mean = sum_c / n
        var = (sumsq_c / n - mean * mean).clamp_min(0.0)
        invstd = torch.rsqrt(var + eps)
        scale = invstd if weight is None else invstd * weight.to(acc)
        shift = -mean * scale if bias is None else bias.to(acc) - mean * scale
        y = torch.addcmul(shift.view(1, -1, 1, 1).to(x.dtype), x, scale.view(1, -1, 1, 1).to(x.dtype))
        if active is not None:
            y.mul_(active)
        ctx.save_for_backward(x, active, weight, mean, invstd, n)
        ctx.sync, ctx.group = sync, group
        ctx.mark_non_differentiable(mean, var, n)
        return y, mean, var, n

    @staticmethod
    def backward(ctx, dy: torch.Tensor, *_stats_grads: torch.Tensor):
        x, active, weight, mean, invstd, n = ctx.saved_tensors
        g = dy if active is None else dy * active
        sum_g = g.sum(_DIMS, dtype=mean.dtype)
        sum_gx = (g * x).sum(_DIMS, dtype=mean.dtype)  # g is zero at masked positions
        sum_gxhat = invstd * (sum_gx - mean * sum_g)  # sum of g * normalised x
        # weight/bias gradients are this process's sums, as nn.SyncBatchNorm returns them: DDP averages them
        dw = sum_gxhat.to(weight.dtype) if weight is not None and ctx.needs_input_grad[2] else None
        db = sum_g.to(weight.dtype if weight is not None else sum_g.dtype) if ctx.needs_input_grad[3] else None
        dx = None
        if ctx.needs_input_grad[0]:
            if ctx.sync:  # the input gradient goes through the global statistics: it needs the global sums
                sum_g, sum_gxhat = _all_reduce_sum(torch.cat([sum_g, sum_gxhat]), ctx.group).chunk(2)
            a = invstd if weight is None else invstd * weight.to(mean.dtype)
            # dx = a * (g - sum_g/n - xhat * sum_gxhat/n), written as a*g + b*x + c with per-channel a, b, c
            b = -a * invstd * sum_gxhat / n
            c = -(a / n) * (sum_g - mean * invstd * sum_gxhat)
            dx = torch.addcmul(c.view(1, -1, 1, 1).to(x.dtype), x, b.view(1, -1, 1, 1).to(x.dtype))
            dx.addcmul_(g, a.view(1, -1, 1, 1).to(x.dtype))
            if active is not None:
                dx.mul_(active)
        return dx, None, dw, db, None, None, None, None


class SparseBatchNorm2d(nn.Module):
    """BatchNorm over the active positions of a masked (B,C,H,W) map; output zero at masked positions.

    Contract: the input is already zero at masked positions, as every layer of a `SparseEncoder` leaves its
    output (so the statistics are plain sums, without one more masking pass per layer).

    Batch mean and variance are taken over the active positions of the whole batch (of every process when
    `sync` is set and torch.distributed is initialised: the per-channel sums and counts are all-reduced,
    with gradients, like `nn.SyncBatchNorm`). Running statistics follow `nn.BatchNorm2d` (unbiased variance,
    `momentum=None` for a cumulative average). With `ctx=None` every position is active, which gives a plain
    BatchNorm with the same all-reduce, usable on CPU with the gloo backend.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        ctx: MaskContext | None,
        sync: bool = False,
        process_group: dist.ProcessGroup | None = None,
    ) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.ctx, self.sync, self.process_group = ctx, sync, process_group
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    @classmethod
    def from_dense(
        cls, bn: nn.modules.batchnorm._BatchNorm, ctx: MaskContext | None, sync: bool = False
    ) -> SparseBatchNorm2d:
        """A sparse BatchNorm sharing `bn`'s parameters and buffers (same tensors, same names)."""
        sparse = cls(
            bn.num_features,
            bn.eps,
            bn.momentum,
            bn.affine,
            bn.track_running_stats,
            ctx=ctx,
            sync=sync,
            process_group=getattr(bn, "process_group", None),
        )
        if bn.affine:
            sparse.weight, sparse.bias = bn.weight, bn.bias
        if bn.track_running_stats:
            sparse.running_mean, sparse.running_var = bn.running_mean, bn.running_var
            sparse.num_batches_tracked = bn.num_batches_tracked
        return sparse

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}, sync={self.sync}, masked={self.ctx is not None}"
        )

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * (count / (count - 1.0).clamp_min(1.0))
        self.running_mean.mul_(1.0 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1.0 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)

    def forward(self, x_bchw: torch.Tensor) -> torch.Tensor:
        hw = tuple(x_bchw.shape[-2:])
        if self.ctx is None:
            active_b1hw = None
            count = torch.tensor(float(x_bchw.shape[0] * hw[0] * hw[1]), device=x_bchw.device)
        else:
            active_b1hw, count = self.ctx.active(hw, x_bchw.dtype), self.ctx.count(hw)

        if self.training or not self.track_running_stats:
            sync = self.sync and self.training and dist.is_available() and dist.is_initialized()
            y_bchw, mean, var, n = _ActiveBatchNorm.apply(
                x_bchw, active_b1hw, self.weight, self.bias, count, self.eps, sync, self.process_group
            )
            if self.training and self.track_running_stats:
                self._update_running(mean, var, n)
            return y_bchw

        scale = torch.rsqrt(self.running_var.float() + self.eps)
        if self.weight is not None:
            scale = scale * self.weight.float()
        shift = -self.running_mean.float() * scale
        if self.bias is not None:
            shift = shift + self.bias.float()
        y_bchw = torch.addcmul(
            shift.view(1, -1, 1, 1).to(x_bchw.dtype), x_bchw, scale.view(1, -1, 1, 1).to(x_bchw.dtype)
        )
        return y_bchw if active_b1hw is None else y_bchw.mul_(active_b1hw)


class SparseLayerNorm(nn.Module):
    """LayerNorm over channels, zero at masked positions.

    LayerNorm statistics are per position, so active positions see exactly the dense LayerNorm; masked
    positions (whose normalised zero vector would become `bias`) are re-zeroed. `channels_last` selects
    the layout: (B,H,W,C) like timm's `LayerNorm` in ConvNeXt blocks, or (B,C,H,W) like `LayerNorm2d`.
    """

    def __init__(
        self, num_channels: int, eps: float = 1e-6, affine: bool = True, *, channels_last: bool, ctx: MaskContext
    ) -> None:
        super().__init__()
        self.num_channels, self.eps, self.channels_last, self.ctx = num_channels, eps, channels_last, ctx
        self.weight = nn.Parameter(torch.ones(num_channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_channels)) if affine else None

    @classmethod
    def from_dense(cls, ln: nn.LayerNorm, ctx: MaskContext, channels_last: bool) -> SparseLayerNorm:
        if len(ln.normalized_shape) != 1:
            raise ValueError(f"only LayerNorm over one (channel) dimension is supported, got {ln.normalized_shape}")
        sparse = cls(ln.normalized_shape[0], ln.eps, ln.elementwise_affine, channels_last=channels_last, ctx=ctx)
        sparse.weight, sparse.bias = ln.weight, ln.bias
        return sparse

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, channels_last={self.channels_last}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            y_bhwc = F.layer_norm(x, (self.num_channels,), self.weight, self.bias, self.eps)
            return y_bhwc.mul_(self.ctx.active(tuple(x.shape[1:3]), y_bhwc.dtype, channels_last=True))
        y_bhwc = F.layer_norm(x.permute(0, 2, 3, 1), (self.num_channels,), self.weight, self.bias, self.eps)
        y_bchw = y_bhwc.permute(0, 3, 1, 2)
        return y_bchw.mul_(self.ctx.active(tuple(x.shape[-2:]), y_bchw.dtype))
