"""SparK-style sparse encoder built from a timm convnet with hierarchical features.

The timm model is created as usual (`timm.create_model(name, num_classes=0)`, head pruned), then its
spatial layers are replaced, on this instance only, by masked counterparts that keep the same parameter and
buffer names (`sparse_layers`, `sparse_norm`). Its state dict is therefore the plain timm state dict minus
the classifier head.
"""

from __future__ import annotations

from itertools import pairwise

import timm
import torch
from timm.layers import LayerNorm, LayerNorm2d
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.pooling import _AdaptiveAvgPoolNd, _AdaptiveMaxPoolNd, _AvgPoolNd, _MaxPoolNd

import pretrain.cpu_backbones  # noqa: F401  (registers the CPU study's timm models: build them by name)
from pretrain.sparse_layers import MaskContext, SparseAvgPool2d, SparseConv2d, SparseLinear, SparseMaxPool2d
from pretrain.sparse_norm import SparseBatchNorm2d, SparseLayerNorm

# Layers that mix or move spatial positions, or normalise over them: each needs a masked counterpart.
_SPATIAL_LAYERS = (
    _ConvNd,
    _BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.Linear,
    _MaxPoolNd,
    _AvgPoolNd,
    _AdaptiveAvgPoolNd,
    _AdaptiveMaxPoolNd,
)
_SPARSE_LAYERS = (SparseConv2d, SparseLinear, SparseMaxPool2d, SparseAvgPool2d, SparseBatchNorm2d, SparseLayerNorm)


def _sparse_counterpart(layer: nn.Module, ctx: MaskContext, sync_bn: bool) -> nn.Module | None:
    """The masked replacement of `layer`, or None when it needs none. Exact types only: a subclass may
    compute something else (e.g. timm's Conv2dSame pads dynamically), so it is refused by the caller."""
    kind = type(layer)
    if kind is nn.Conv2d:
        return SparseConv2d.from_dense(layer, ctx)
    if kind in (nn.BatchNorm2d, nn.SyncBatchNorm):
        return SparseBatchNorm2d.from_dense(layer, ctx, sync=sync_bn or kind is nn.SyncBatchNorm)
    if kind is LayerNorm2d:
        return SparseLayerNorm.from_dense(layer, ctx, channels_last=False)
    if kind in (LayerNorm, nn.LayerNorm):  # in timm convnets these run on channels-last (B,H,W,C) maps
        return SparseLayerNorm.from_dense(layer, ctx, channels_last=True)
    if kind is nn.Linear:  # a pointwise conv on a channels-last map (ConvNeXt MLP)
        return SparseLinear.from_dense(layer, ctx)
    if kind is nn.MaxPool2d:
        return SparseMaxPool2d.from_dense(layer, ctx)
    if kind is nn.AvgPool2d:
        return SparseAvgPool2d.from_dense(layer, ctx)
    return None


def sparsify_(model: nn.Module, ctx: MaskContext, sync_bn: bool = False) -> nn.Module:
    """Replace, in place, every spatial layer of `model` by its masked counterpart sharing `ctx`.

    Parameter and buffer names do not change. A spatial layer with no counterpart raises ValueError naming
    it. Modules that pool globally inside their forward (squeeze-excitation, attention) are not detected by
    type; their 1x1 convs on pooled maps fail loudly at the first forward pass instead.
    """
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, _SPARSE_LAYERS):
                continue
            sparse = _sparse_counterpart(child, ctx, sync_bn)
            if sparse is not None:
                setattr(parent, child_name, sparse)
            elif isinstance(child, _SPATIAL_LAYERS):
                path = f"{parent_name}.{child_name}" if parent_name else child_name
                raise ValueError(
                    f"layer '{path}' ({type(child).__module__}.{type(child).__name__}) has no sparse "
                    "counterpart; supported: Conv2d, BatchNorm2d, SyncBatchNorm, LayerNorm, "
                    "LayerNorm2d, Linear (channels-last), MaxPool2d, AvgPool2d"
                )
    return model


def build_timm_trunk(backbone: str, **timm_kwargs) -> tuple[nn.Module, list[int]]:
    """`timm.create_model(backbone, num_classes=0)` with the head and final norm pruned, and the indices of
    its feature levels at strides 4, 8, ..., its last stride (the levels the decoder uses)."""
    model = timm.create_model(backbone, pretrained=False, num_classes=0, **timm_kwargs)
    if not hasattr(model, "forward_intermediates") or not hasattr(model, "prune_intermediate_layers"):
        raise ValueError(
            f"timm model '{backbone}' has no forward_intermediates/prune_intermediate_layers; "
            "use a hierarchical convnet such as resnet50 or convnext_tiny"
        )
    reductions = [info["reduction"] for info in model.feature_info]
    indices = [i for i, r in enumerate(reductions) if r >= 4 and (i + 1 == len(reductions) or reductions[i + 1] != r)]
    kept = [reductions[i] for i in indices]
    if not kept or kept[0] != 4 or any(b != 2 * a for a, b in pairwise(kept)):
        raise ValueError(f"timm model '{backbone}' has feature strides {reductions}; need 4, 8, 16, ... doubling")
    model.prune_intermediate_layers(indices, prune_norm=True, prune_head=True)
    return model, indices


class SparseEncoder(nn.Module):
    """A timm convnet that sees only the active cells: masked positions are zero at every layer's output.

    Args:
        backbone: timm model name (e.g. "resnet50", "convnext_tiny").
        sync_bn: all-reduce BatchNorm statistics over processes (DDP) when torch.distributed is initialised.
        **timm_kwargs: passed to `timm.create_model` (e.g. drop_path_rate).
    """

    def __init__(self, backbone: str, sync_bn: bool = False, **timm_kwargs) -> None:
        super().__init__()
        self.backbone = backbone
        self.mask_context = MaskContext()
        model, self.feature_indices = build_timm_trunk(backbone, **timm_kwargs)
        self.model = sparsify_(model, self.mask_context, sync_bn=sync_bn)
        info = [model.feature_info[i] for i in self.feature_indices]
        self.channels: list[int] = [f["num_chs"] for f in info]  # fine to coarse
        self.reductions: list[int] = [f["reduction"] for f in info]
        self.downsample_ratio: int = self.reductions[-1]
        self.uses_layer_norm = any(isinstance(m, SparseLayerNorm) for m in self.model.modules())

    def grid_hw(self, input_hw: tuple[int, int]) -> tuple[int, int]:
        """The mask grid for an input of size `input_hw` (each side a multiple of the downsample ratio)."""
        h, w = input_hw
        r = self.downsample_ratio
        if h % r or w % r:
            raise ValueError(f"input size {(h, w)} must be a multiple of the downsample ratio {r}")
        return h // r, w // r

    def forward(self, x_bCHW: torch.Tensor, active_b1hw: torch.Tensor) -> list[torch.Tensor]:
        """Features at strides 4, 8, ..., downsample_ratio (fine to coarse), zero at masked positions.

        `active_b1hw` is bool (B,1,h,w) on the grid of `grid_hw`, True = visible. The input is masked here
        too, so no masked pixel reaches an active position through the first convolution.
        """
        if tuple(active_b1hw.shape) != (x_bCHW.shape[0], 1, *self.grid_hw(tuple(x_bCHW.shape[-2:]))):
            raise ValueError(
                f"mask shape {tuple(active_b1hw.shape)} does not match input {tuple(x_bCHW.shape)} "
                f"at downsample ratio {self.downsample_ratio}"
            )
        with self.mask_context.activate(active_b1hw):
            x_bCHW = x_bCHW * self.mask_context.active(tuple(x_bCHW.shape[-2:]), x_bCHW.dtype)
            return self.model.forward_intermediates(x_bCHW, indices=self.feature_indices, intermediates_only=True)
