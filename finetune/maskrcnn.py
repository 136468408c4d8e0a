"""torchvision's Mask R-CNN with an FPN on our backbone.

Two ways a backbone plugs in:

1. ResNets whose timm parameter names equal torchvision's (resnet18/34/50/101/152, resnext50_32x4d,
   wide_resnet50_2, ...): torchvision's own `resnet_fpn_backbone` is built and the exported timm state dict is
   loaded into its body (an IntermediateLayerGetter over conv1, bn1, layer1..layer4; the 'fc' head is skipped).
   This is the paper's Mask R-CNN R50-FPN.
2. Any other timm convnet (ConvNeXt, EfficientNet, RegNet, ResNet-D, ...): `TimmFpnBackbone` wraps timm's
   features_only extractor (weights loaded by `create_backbone`) and a torchvision FeaturePyramidNetwork with a
   max-pool level on top, exposing what MaskRCNN expects of a backbone (like torchvision's BackboneWithFPN): an
   `out_channels` attribute and a forward returning an OrderedDict of maps '0'..'3' (strides 4..32) plus 'pool'.

With pretrained weights BatchNorm layers are frozen (FrozenBatchNorm2d), as in torchvision's and detectron2's
recipes for small detection batches; from scratch they stay trainable BatchNorm.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from timm.layers import freeze_batch_norm_2d
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from finetune.backbone import (
    SCRATCH,
    LoadReport,
    create_backbone,
    head_keys,
    load_into,
    read_state_dict,
    resolve_weights,
)

# timm names whose parameters are named exactly like torchvision's ResNet of the same name.
TORCHVISION_RESNETS = frozenset(
    {
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
        "resnext50_32x4d",
        "resnext101_32x8d",
        "wide_resnet50_2",
        "wide_resnet101_2",
    }
)
FPN_STRIDES = (4, 8, 16, 32)


class TimmFpnBackbone(nn.Module):
    """timm features_only extractor + FPN: the backbone contract of torchvision's detection models.

    body:          a timm features_only model (its feature_info names channels and strides).
    out_channels:  FPN width (256 in the standard Mask R-CNN).
    Uses the levels of stride 4, 8, 16 and 32 and adds a stride-64 max-pool level ('pool') for the RPN.
    """

    def __init__(self, body: nn.Module, out_channels: int = 256) -> None:
        super().__init__()
        reductions = body.feature_info.reduction()
        missing = [s for s in FPN_STRIDES if s not in reductions]
        if missing:
            raise ValueError(f"backbone has no feature level of stride {missing} (it has {reductions})")
        self.level_index = [reductions.index(s) for s in FPN_STRIDES]
        channels = body.feature_info.channels()
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            [channels[i] for i in self.level_index], out_channels, extra_blocks=LastLevelMaxPool()
        )
        self.out_channels = out_channels

    def forward(self, image_b3hw: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.body(image_b3hw)
        levels = OrderedDict((str(k), feats[i]) for k, i in enumerate(self.level_index))
        return self.fpn(levels)


def _torchvision_fpn(name: str, init: str, trainable_layers: int, strict: bool) -> tuple[nn.Module, LoadReport]:
    spec, weights = resolve_weights(name, init)
    scratch = weights is None
    fpn = resnet_fpn_backbone(
        backbone_name=name,
        weights=None,
        norm_layer=nn.BatchNorm2d if scratch else FrozenBatchNorm2d,
        trainable_layers=5 if scratch else trainable_layers,
    )
    if scratch:
        return fpn, LoadReport(init=SCRATCH)
    report = load_into(
        fpn.body, read_state_dict(weights), init=spec.kind, source=weights, head_prefixes=head_keys(name), strict=strict
    )
    return fpn, report


def build_mask_rcnn(
    backbone: str,
    init: str,
    num_classes: int,
    *,
    min_size: int = 800,
    max_size: int = 1333,
    trainable_layers: int = 3,
    image_mean: Sequence[float] = (0.485, 0.456, 0.406),
    image_std: Sequence[float] = (0.229, 0.224, 0.225),
    strict: bool = True,
    **maskrcnn_kwargs,
) -> tuple[MaskRCNN, LoadReport]:
    """Mask R-CNN + FPN on `backbone` initialised from `init` (see finetune.backbone).

    num_classes:       object classes + 1 (background).
    min_size/max_size: the model's internal resize of every image (torchvision's GeneralizedRCNNTransform).
    trainable_layers:  torchvision ResNets with pretrained weights: how many of layer4..conv1 train (0-5).
    """
    arch = backbone.split(".")[0]
    if arch in TORCHVISION_RESNETS:
        fpn, report = _torchvision_fpn(backbone, init, trainable_layers, strict)
    else:
        body, report = create_backbone(backbone, init, features_only=True, strict=strict)
        if report.init != SCRATCH:
            body = freeze_batch_norm_2d(body)
        fpn = TimmFpnBackbone(body)
    model = MaskRCNN(
        fpn,
        num_classes=num_classes,
        min_size=min_size,
        max_size=max_size,
        image_mean=list(image_mean),
        image_std=list(image_std),
        **maskrcnn_kwargs,
    )
    return model, report
