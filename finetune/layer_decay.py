"""Layer-wise lr decay for ResNets, as SparK fine-tunes them: parameter groups whose lr shrinks towards the input.

A parameter at layer `i` of `n` gets lr · decay^(n − 1 − i): the head (layer n − 1) trains at the full lr, the stem
(layer 0) at decay^(n − 1). Two layer maps, each the one its reference uses:

- `classify_layer_id`: SparK `downstream_imagenet/models/__init__.py` (resnets_get_layer_id_and_scale_exp):
  stem 0, layer1 1, layer2 and layer3 in chunks of blocks, layer4 N, the classifier N + 1.
- `detect_layer_id`: SparK/MWM `downstream_d2/lr_decay.py` (lr_factor_func): stem 0, res2 1, res3 2, res4 in chunks
  of 3 blocks, res5 N, everything after the backbone (FPN, RPN, RoI heads) N + 1.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

from torch import nn

# SparK's chunk sizes (blocks per layer id) for layer2 and layer3, keyed by their block counts.
SPARK_CHUNKS = {(4, 6): (2, 3), (4, 23): (2, 3), (8, 36): (4, 4), (24, 36): (4, 4), (30, 48): (5, 6)}
STAGE = re.compile(r"(?:^|\.)layer([1-4])\.(\d+)\.")
STEM = re.compile(r"(?:^|\.)(conv1|bn1)\.")


def resnet_depths(model: nn.Module) -> tuple[int, int, int, int] | None:
    """Blocks per stage (layer1..layer4) of a ResNet-like module found anywhere in `model`, else None."""
    for module in model.modules():
        stages = [getattr(module, f"layer{k}", None) for k in range(1, 5)]
        if all(isinstance(s, nn.Sequential) for s in stages):
            return tuple(len(s) for s in stages)  # type: ignore[return-value]
    return None


def classify_layer_id(depths: Sequence[int], head_prefixes: Sequence[str]) -> tuple[Callable[[str], int], int]:
    """SparK's classification layer map for a timm ResNet with `depths` blocks per stage; returns (layer_of, n).

    Block counts SparK does not list (e.g. ResNet-18's) get one layer id per stage.
    """
    _, l2, l3, _ = depths
    blk2, blk3 = SPARK_CHUNKS.get((l2, l3), (l2, l3))
    n2, n3 = math.ceil(l2 / blk2), math.ceil(l3 / blk3)
    last = 2 + n2 + n3  # layer4

    def layer_of(name: str) -> int:
        if any(name == p or name.startswith(p + ".") for p in head_prefixes):
            return last + 1
        match = STAGE.search(name)
        if match is None:
            return 0  # stem (conv1 / bn1, deep-stem variants included)
        stage, block = int(match[1]), int(match[2])
        return {1: 1, 2: 2 + block // blk2, 3: 2 + n2 + block // blk3, 4: last}[stage]

    return layer_of, last + 2


def detect_layer_id(depths: Sequence[int]) -> tuple[Callable[[str], int], int]:
    """detectron2 SparK/MWM layer map for a detector whose ResNet body names stages layer1..layer4."""
    last = 3 + math.ceil(depths[2] / 3)  # res5: 5 for ResNet-50, 11 for ResNet-101

    def layer_of(name: str) -> int:
        match = STAGE.search(name)
        if match is not None:
            stage, block = int(match[1]), int(match[2])
            return {1: 1, 2: 2, 3: 3 + block // 3, 4: last}[stage]
        if STEM.search(name) and ".body." in f".{name}":
            return 0
        return last + 1  # FPN, RPN, RoI heads

    return layer_of, last + 2


NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def layer_decay_groups(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    layer_decay: float,
    layer_of: Callable[[str], int],
    num_layers: int,
    no_decay: Callable[[nn.Module, nn.Parameter], bool],
) -> list[dict]:
    """Optimizer groups per (layer, decay or not): 'lr' = lr · layer_decay^(num_layers − 1 − layer), 'lr_scale'
    records the factor, 'weight_decay' is 0 where `no_decay(module, param)` holds. Frozen parameters are left out."""
    groups: dict[tuple[int, bool], dict] = {}
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            layer = layer_of(f"{module_name}.{param_name}" if module_name else param_name)
            decays = not no_decay(module, param)
            scale = layer_decay ** (num_layers - 1 - layer)
            group = groups.setdefault(
                (layer, decays),
                {"params": [], "lr": lr * scale, "lr_scale": scale, "weight_decay": weight_decay if decays else 0.0},
            )
            group["params"].append(param)
    return [groups[k] for k in sorted(groups)]


def spark_no_decay(module: nn.Module, param: nn.Parameter) -> bool:
    """SparK's classification rule: no weight decay on 1-D parameters (norm weights, all biases)."""
    return param.ndim <= 1


def detectron2_no_decay(module: nn.Module, param: nn.Parameter) -> bool:
    """detectron2's default (WEIGHT_DECAY_NORM = 0): no weight decay on normalisation layers; biases decay."""
    return isinstance(module, NORMS)
