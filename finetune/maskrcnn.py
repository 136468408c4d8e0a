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

Normalisation follows SparK's detectron2 config (coco_R_50_FPN_CONV_1x_moco_adam.yaml, used unchanged by MWM):
`norm='bn'` puts trainable BatchNorm (SyncBatchNorm under DDP with the trainer's sync_batchnorm) in the backbone,
the FPN and both RoI heads, with nothing frozen and a 4conv1fc box head. `norm='frozen_bn'` is detectron2's and
torchvision's usual recipe instead: the backbone's BatchNorm frozen on the pretraining statistics
(FrozenBatchNorm2d), no norm in FPN and heads; fine-tuning a self-supervised backbone that way is known to hurt.

Image sizes: `MultiScaleTransform` draws each training image's shorter side from `train_sizes` (detectron2's
ResizeShortestEdge 'choice') and uses `test_size` in evaluation.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import freeze_batch_norm_2d
from torch import nn
from torchvision.models import resnet
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from finetune.backbone import (
    SCRATCH,
    LoadReport,
    create_backbone,
    head_keys,
    load_into,
    plain_vit_depth,
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
FPN_CHANNELS = 256
Norm = Literal["bn", "frozen_bn"]
# detectron2's multi-scale training sizes of SparK's config (MIN_SIZE_TRAIN 480..896 step 32) and its test size.
D2_TRAIN_SIZES = tuple(range(480, 897, 32))
D2_TEST_SIZE = 800


class TimmFpnBackbone(nn.Module):
    """timm features_only extractor + FPN: the backbone contract of torchvision's detection models.

    body:          a timm features_only model (its feature_info names channels and strides).
    out_channels:  FPN width (256 in the standard Mask R-CNN).
    norm_layer:    normalisation after the FPN's lateral and output convolutions (None: plain conv + bias).
    Uses the levels of stride 4, 8, 16 and 32 and adds a stride-64 max-pool level ('pool') for the RPN.
    """

    def __init__(
        self, body: nn.Module, out_channels: int = FPN_CHANNELS, norm_layer: Callable[..., nn.Module] | None = None
    ) -> None:
        super().__init__()
        reductions = body.feature_info.reduction()
        missing = [s for s in FPN_STRIDES if s not in reductions]
        if missing:
            raise ValueError(f"backbone has no feature level of stride {missing} (it has {reductions})")
        self.level_index = [reductions.index(s) for s in FPN_STRIDES]
        channels = body.feature_info.channels()
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            [channels[i] for i in self.level_index],
            out_channels,
            extra_blocks=LastLevelMaxPool(),
            norm_layer=norm_layer,
        )
        self.out_channels = out_channels

    def forward(self, image_b3hw: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.body(image_b3hw)
        levels = OrderedDict((str(k), feats[i]) for k, i in enumerate(self.level_index))
        return self.fpn(levels)


class MultiScaleTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform with detectron2's sizes: in training each image's shorter side is drawn
    from `train_sizes`, in evaluation it is `test_size`; the longer side is capped at `max_size` either way."""

    def __init__(
        self,
        train_sizes: Sequence[int],
        test_size: int,
        max_size: int,
        image_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        image_std: Sequence[float] = IMAGENET_DEFAULT_STD,
    ) -> None:
        super().__init__(tuple(train_sizes), max_size, list(image_mean), list(image_std))
        self.train_sizes, self.test_size = tuple(train_sizes), int(test_size)

    def train(self, mode: bool = True) -> MultiScaleTransform:
        super().train(mode)
        self.min_size = self.train_sizes if mode else (self.test_size,)  # torchvision draws from min_size
        return self


def _torchvision_fpn(
    name: str, init: str, norm: Norm, trainable_layers: int, strict: bool
) -> tuple[nn.Module, LoadReport]:
    """torchvision's ResNet (timm parameter names) with the exported weights, under an FPN; `trainable_layers` of
    conv1, layer1..layer4 (counted from layer4) train, the rest is frozen as detectron2's FREEZE_AT does."""
    spec, weights = resolve_weights(name, init)
    body = getattr(resnet, name)(weights=None, norm_layer=nn.BatchNorm2d if norm == "bn" else FrozenBatchNorm2d)
    report = LoadReport(init=SCRATCH)
    if weights is not None:
        report = load_into(
            body, read_state_dict(weights), init=spec.kind, source=weights, head_prefixes=head_keys(name), strict=strict
        )
    # torchvision's own ResNet-FPN assembly (what resnet_fpn_backbone calls), with a norm in the FPN
    fpn = _resnet_fpn_extractor(
        body, trainable_layers, extra_blocks=LastLevelMaxPool(), norm_layer=nn.BatchNorm2d if norm == "bn" else None
    )
    return fpn, report


def roi_heads(num_classes: int, box_head: Literal["4conv1fc", "2fc"], norm: Norm) -> dict[str, nn.Module]:
    """Box and mask heads for MaskRCNN: detectron2's FastRCNNConvFCHead (4 conv + 1 fc, 1024 wide) or the 2-fc
    head, and the 4-conv mask head, with BatchNorm after every conv when `norm` is 'bn'."""
    norm_layer = nn.BatchNorm2d if norm == "bn" else None
    pooled = (FPN_CHANNELS, 7, 7)  # RoIAlign output of the box branch
    if box_head == "4conv1fc":
        box = FastRCNNConvFCHead(pooled, [FPN_CHANNELS] * 4, [1024], norm_layer=norm_layer)
    elif box_head == "2fc":
        box = TwoMLPHead(FPN_CHANNELS * 7 * 7, 1024)
    else:
        raise ValueError(f"box_head must be '4conv1fc' or '2fc', got {box_head!r}")
    return {
        "box_head": box,
        "box_predictor": FastRCNNPredictor(1024, num_classes),
        "mask_head": MaskRCNNHeads(FPN_CHANNELS, [FPN_CHANNELS] * 4, 1, norm_layer=norm_layer),
        "mask_predictor": MaskRCNNPredictor(FPN_CHANNELS, FPN_CHANNELS, num_classes),
    }


def build_mask_rcnn(
    backbone: str,
    init: str,
    num_classes: int,
    *,
    norm: Norm = "bn",
    box_head: Literal["4conv1fc", "2fc"] = "4conv1fc",
    trainable_layers: int = 5,
    train_sizes: Sequence[int] = D2_TRAIN_SIZES,
    test_size: int = D2_TEST_SIZE,
    max_size: int = 1333,
    strict: bool = True,
    **maskrcnn_kwargs,
) -> tuple[MaskRCNN, LoadReport]:
    """Mask R-CNN + FPN on `backbone` initialised from `init` (see finetune.backbone).

    num_classes:      object classes + 1 (background).
    norm:             'bn' (SparK: trainable BatchNorm everywhere) | 'frozen_bn' (pretraining statistics frozen in
                      the backbone, no norm in FPN and heads).
    box_head:         '4conv1fc' (SparK) | '2fc' (torchvision's / detectron2's default).
    trainable_layers: torchvision ResNets: how many of layer4..conv1 train (5 = all, SparK's FREEZE_AT 0).
    train_sizes / test_size / max_size: the images' shorter side in training (drawn per image) and evaluation,
                      and the cap on the longer side (MultiScaleTransform).
    """
    arch = backbone.split(".")[0]
    if plain_vit_depth(backbone, init) is not None:
        raise ValueError(
            f"detection takes convolutional backbones only (Mask R-CNN + FPN on hierarchical features); "
            f"'{backbone}' is a plain ViT: fine-tune it with `finetune classify` or `finetune segment`"
        )
    if norm not in ("bn", "frozen_bn"):
        raise ValueError(f"norm must be 'bn' or 'frozen_bn', got {norm!r}")
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    if arch in TORCHVISION_RESNETS:
        fpn, report = _torchvision_fpn(backbone, init, norm, trainable_layers, strict)
    else:
        body, report = create_backbone(backbone, init, features_only=True, strict=strict)
        if norm == "frozen_bn":
            body = freeze_batch_norm_2d(body)
        fpn = TimmFpnBackbone(body, norm_layer=nn.BatchNorm2d if norm == "bn" else None)
    if norm == "frozen_bn" and report.init == SCRATCH:
        raise ValueError("norm='frozen_bn' freezes pretraining statistics: it needs initial weights, not scratch")
    model = MaskRCNN(fpn, num_classes=None, **roi_heads(num_classes, box_head, norm), **maskrcnn_kwargs)
    model.transform = MultiScaleTransform(train_sizes, test_size, max_size)
    return model, report
