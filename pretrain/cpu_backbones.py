"""Small timm convnets for CPU studies: hierarchical, stride 16, so that a 96 px input has a 6 x 6 mask grid.

At the paper's stride 32 a 96 px image has a 3 x 3 grid, too coarse for a region to be masked harder than
its surroundings. `resnet10_narrow_os16` is timm's own `ResNet` class (BasicBlocks, one per stage, as timm's
resnet10t) with narrow stages (32, 64, 128, 256 channels) and `output_stride=16`: the last stage keeps stride
16 and dilates its 3x3 convolutions by 2 instead of downsampling (timm's DeepLab-style option). Its feature
strides are 2, 4, 8, 16, 16, so SparK's encoder (`pretrain.sparse_encoder.build_timm_trunk`) takes strides 4,
8, 16 (the stride-16 level is the last stage's output) and masks on the stride-16 grid; every layer is a plain
Conv2d / BatchNorm2d / MaxPool2d, which the sparse conversion accepts.

Registration: timm documents `@timm.models.register_model` on an entrypoint `name(pretrained=False, **kwargs)`
as the way to add an architecture, and reads the module's `default_cfgs` for its pretrained config (here: no
weights, 96 px). That writes timm's registry, a module-level table of timm's, once per process at import; it is
acceptable here because it only adds a new name (nothing of timm's changes), the name fully determines the
architecture (so an export's sidecar, which records it, rebuilds the same model in `finetune`), and the modules
that build models by name (`pretrain.sparse_encoder`, hence `pretrain.export` and `finetune.backbone`) import
this one, so every process of the pipeline sees it. Outside the pipeline: `import pretrain.cpu_backbones` before
`timm.create_model("resnet10_narrow_os16")`.
"""

from __future__ import annotations

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, ResNet

NARROW_CHANNELS = (32, 64, 128, 256)

default_cfgs = generate_default_cfgs(
    {
        "resnet10_narrow_os16": {
            "url": "",
            "num_classes": 1000,
            "input_size": (3, 96, 96),
            "pool_size": (6, 6),
            "crop_pct": 1.0,
            "interpolation": "bilinear",
            "first_conv": "conv1",
            "classifier": "fc",
        },
        "resnet10_narrow_os8": {
            "url": "",
            "num_classes": 1000,
            "input_size": (3, 64, 64),
            "pool_size": (8, 8),
            "crop_pct": 1.0,
            "interpolation": "bilinear",
            "first_conv": "conv1",
            "classifier": "fc",
        },
    }
)


@register_model
def resnet10_narrow_os16(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-10 (one BasicBlock per stage) with 32-64-128-256 channels and output stride 16 (no weights)."""
    if pretrained:
        raise ValueError("resnet10_narrow_os16 has no pretrained weights")
    args = dict(block=BasicBlock, layers=(1, 1, 1, 1), channels=NARROW_CHANNELS, output_stride=16)
    return build_model_with_cfg(ResNet, "resnet10_narrow_os16", pretrained, **dict(args, **kwargs))


@register_model
def resnet10_narrow_os8(pretrained: bool = False, **kwargs) -> ResNet:
    """The same network at output stride 8 (the last two stages dilate instead of downsampling; no weights):
    an 8 x 8 mask grid at 64 px, for the positive control's finer grid (configs/pretrain/control_cpu.yaml)."""
    if pretrained:
        raise ValueError("resnet10_narrow_os8 has no pretrained weights")
    args = dict(block=BasicBlock, layers=(1, 1, 1, 1), channels=NARROW_CHANNELS, output_stride=8)
    return build_model_with_cfg(ResNet, "resnet10_narrow_os8", pretrained, **dict(args, **kwargs))
