"""The linear-probe head of MAE's main_linprobe.py: BatchNorm without affine parameters, then a linear layer."""

from __future__ import annotations

from timm.layers import trunc_normal_
from torch import nn


class ProbeHead(nn.Sequential):
    """BatchNorm1d(affine=False, eps=1e-6) -> Linear; the linear weights start trunc-normal with std 0.01.

    The parameter-free BatchNorm standardises the frozen features, so one lr suits backbones whose feature scales
    differ (MAE, after MoCo v3); only the Linear layer learns.
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        linear = nn.Linear(in_features, num_classes)
        trunc_normal_(linear.weight, std=0.01)
        super().__init__(nn.BatchNorm1d(in_features, affine=False, eps=1e-6), linear)
