"""MaskedCLIP's optimizer parameter groups: per-tower learning rates, optional layer-wise lr decay per tower, and
MAE's weight-decay rule (none for 1-D parameters, biases and the token / position embeddings)."""

from __future__ import annotations

import fnmatch
import re
from typing import Any

from torch import nn

from pretrain.maskedclip.config import TextCfg, VisionCfg

# Besides 1-D parameters (norms, biases, the logit scale), these never decay (fnmatch patterns).
NO_WEIGHT_DECAY = ("*mask_token*", "*pos_embed*", "*cls_token*", "*reg_token*")
_VIT_STEM = re.compile(r"encoder\.vit\.(cls_token|reg_token|pos_embed|patch_embed|norm_pre)\b")
_VIT_BLOCK = re.compile(r"encoder\.vit\.blocks\.(\d+)\.")
_BRIDGE_BLOCK = re.compile(r"bridge\.blocks\.(\d+)\.")
_BERT_STEM = re.compile(r"text\.tower\.transformer\.embeddings\.")
_BERT_LAYER = re.compile(r"text\.tower\.transformer\.encoder\.layer\.(\d+)\.")


def vit_layer_id(name: str, first_bridge_block: int, n_layers: int) -> int:
    """Layer of an image-tower parameter (`MaskedCLIP` names) in MAE's / BEiT's numbering of the whole ViT:
    0 the stem (patch and position embeddings, class token), i the block i - 1 (E's, then B's from
    `first_bridge_block`), `n_layers` (= blocks + 1) the rest (the norms, P_I)."""
    if _VIT_STEM.match(name):
        return 0
    if match := _VIT_BLOCK.match(name):
        return int(match.group(1)) + 1
    if match := _BRIDGE_BLOCK.match(name):
        return first_bridge_block + int(match.group(1)) + 1
    return n_layers


def bert_layer_id(name: str, n_layers: int) -> int:
    """Layer of a text-tower parameter: 0 the embeddings, i the BERT layer i - 1, `n_layers` (= layers + 1) the
    rest (P_T; BERT's unused pooler)."""
    if _BERT_STEM.match(name):
        return 0
    if match := _BERT_LAYER.match(name):
        return int(match.group(1)) + 1
    return n_layers


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """timm's `param_groups_weight_decay` rule: 1-D parameters, biases and `NO_WEIGHT_DECAY` names."""
    return param.ndim <= 1 or name.endswith(".bias") or any(fnmatch.fnmatch(name, p) for p in NO_WEIGHT_DECAY)


def lr_scales(model: nn.Module, vision: VisionCfg, text: TextCfg) -> dict[str, tuple[str, int, float]]:
    """Every parameter name of `model` (a `MaskedCLIP`) -> (part, layer, lr multiple): the text tower at
    `text.lr_scale` x `text.layer_decay`^(L - layer), the image tower (E, B, P_I) likewise with `vision`'s, the rest
    (decoders, temperature) at 1."""
    n_vit = model.bridge.first_block + len(model.bridge.blocks) + 1
    n_bert = len(model.text.tower.transformer.encoder.layer) + 1
    scales = {}
    for name, _ in model.named_parameters():
        if name.startswith("text."):
            layer = bert_layer_id(name, n_bert)
            scales[name] = ("text", layer, text.lr_scale * text.layer_decay ** (n_bert - layer))
        elif name.startswith(("encoder.", "bridge.")):
            layer = vit_layer_id(name, model.bridge.first_block, n_vit)
            scales[name] = ("image", layer, vision.lr_scale * vision.layer_decay ** (n_vit - layer))
        else:
            scales[name] = ("rest", 0, 1.0)
    return scales


def param_groups(
    model: nn.Module, lr: float, weight_decay: float, vision: VisionCfg, text: TextCfg
) -> list[dict[str, Any]]:
    """AdamW groups of the trainable parameters (the EMA teacher, BERT's unused pooler and locked layers are
    frozen): text tower, image tower, the rest; within each, layer by layer (one layer when the decay is off),
    no-decay parameters first. Each group's `lr` is `lr` times its `lr_scale`."""
    scales = lr_scales(model, vision, text)
    buckets: dict[tuple[int, int, float], dict[bool, list[nn.Parameter]]] = {}
    order = {"text": 0, "image": 1, "rest": 2}
    decay_on = {"text": text.layer_decay != 1.0, "image": vision.layer_decay != 1.0, "rest": False}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part, layer, scale = scales[name]
        key = (order[part], layer if decay_on[part] else 0, scale)
        buckets.setdefault(key, {True: [], False: []})[no_weight_decay(name, param)].append(param)
    groups = []
    for key in sorted(buckets):
        scale = key[2]
        for exempt in (True, False):
            if buckets[key][exempt]:
                wd = 0.0 if exempt else weight_decay
                groups.append({"params": buckets[key][exempt], "weight_decay": wd, "lr": lr * scale, "lr_scale": scale})
    return groups
