"""MaskedCLIP's settings in four small groups: the image tower, the text tower, the two decoders, the loss terms.

They are `model.vision.*`, `model.text.*`, `model.decoders.*` and `model.losses.*` in a LightningCLI config
(`MaskedClipPretraining`); the masking, optimisation and seed keys stay flat beside them, as in `pretrain fit`.
open_clip's `CLIPVisionCfg` / `CLIPTextCfg` are the model: one frozen dataclass per part, read by the part.

Configs of the code before the grouping used flat keys (`model.vit`, `model.lambda_clip`, ...): `FLAT_KEYS` maps
each to its new place; `flat_key_errors` names them for the CLI, and `nest_flat_args` rebuilds the groups from a
checkpoint's flat hyper-parameters.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

Teacher = Literal["stop_gradient", "ema"]


@dataclass(frozen=True)
class VisionCfg:
    """The image tower: timm ViT `vit` split into the encoder E (its first blocks) and the bridge B (its last
    `bridge_depth` blocks, then P_I).

    Args:
        vit: timm VisionTransformer name (class-token or average pooling, learned position embeddings).
        bridge_depth: the ViT's last blocks that form B.
        input_size: square training input side (also the data crop size, linked).
        init: start E and B from a pretrained ViT `vit`: a timm state dict file, or an open_clip folder in
            BiomedCLIP's layout (`local-dir:DIR`; its P_I too), e.g. BiomedCLIP's ViT-B/16. None: random.
        lr_scale: E + B + P_I's learning rate as a multiple of the module's `lr`.
        layer_decay: layer-wise lr decay over the whole ViT (BEiT / MAE fine-tuning's): the parameters of layer
            i of L = depth + 1 (0: patch and position embeddings, class token; i: block i - 1; L: the norms and
            P_I) get lr x lr_scale x layer_decay^(L - i). 1.0: off.
    """

    vit: str = "vit_base_patch16_224"
    bridge_depth: int = 2
    input_size: int = 224
    init: str | None = None
    lr_scale: float = 1.0
    layer_decay: float = 1.0


@dataclass(frozen=True)
class TextCfg:
    """The text tower T + P_T: open_clip's Hugging Face BERT tower, CLS-pooled, mlp projection (BiomedCLIP's).

    Args:
        model: folder with a BERT `config.json` and its tokenizer (and weights when `pretrained`), e.g. a local
            copy of BiomedBERT; None: the built-in character vocabulary and a BERT from `bert` alone.
        pretrained: start from the folder's BERT weights (as BiomedCLIP started from PubMedBERT).
        bert: `transformers.BertConfig` fields (hidden_size, num_hidden_layers, ...) overriding the folder's.
        context_length: tokens per report (linked to the data module's).
        lr_scale: T + P_T's learning rate as a multiple of the module's `lr`.
        layer_decay: as `VisionCfg.layer_decay` over the BERT: 0 the embeddings, i its layer i - 1, L = layers + 1
            the projection P_T. 1.0: off.
        lock, lock_unlocked_layers, lock_freeze_layer_norm: open_clip's `lock_text_tower`: freeze the BERT but
            its last `lock_unlocked_layers` layers (LayerNorms too unless `lock_freeze_layer_norm` is false); P_T
            stays trainable.
    """

    model: str | None = None
    pretrained: bool = False
    bert: dict[str, Any] | None = None
    context_length: int = 256
    lr_scale: float = 1.0
    layer_decay: float = 1.0
    lock: bool = False
    lock_unlocked_layers: int = 0
    lock_freeze_layer_norm: bool = True


@dataclass(frozen=True)
class DecoderCfg:
    """D_I (pixels, for L_MIM) and D_F (CLIP-space features, for L_MKD): MAE's decoder trunk.

    Args:
        width, heads: both decoders' width and attention heads (MAE ViT-B: 512, 16).
        depth: D_I's blocks (MAE: 8); feature_depth: D_F's.
    """

    width: int = 512
    depth: int = 8
    heads: int = 16
    feature_depth: int = 4


@dataclass(frozen=True)
class LossCfg:
    """L = L_MIM + lambda_clip L_CLIP + lambda_mkd L_MKD (a term is off when its switch is false or weight 0).

    Args:
        mim: L_MIM, MAE's pixel regression on the masked patches.
        lambda_clip: L_CLIP's weight (symmetric InfoNCE over the paired images and their reports).
        lambda_mkd: L_MKD's weight (the masked positions' CLIP-space features regressed on the full image's).
        teacher: L_MKD's target source: the online E and B detached ("stop_gradient") or their EMA ("ema").
        ema_momentum: the EMA teacher's momentum.
        mkd_target_norm: layer-normalise the distillation target (no affine).
        gather_negatives: under DDP, L_CLIP's negatives are the pairs of every process (CLIP's); False: own only.
        pairs_per_study: at most this many images of a study enter a step's L_CLIP (None: all).
        mask_related_pairs: pairs of one report text or one study are not each other's negatives in L_CLIP
            (False: CLIP's every-other-pair negatives, duplicates included).
    """

    mim: bool = True
    lambda_clip: float = 1.0
    lambda_mkd: float = 1.0
    teacher: Teacher = "stop_gradient"
    ema_momentum: float = 0.996
    mkd_target_norm: bool = True
    gather_negatives: bool = True
    pairs_per_study: int | None = None
    mask_related_pairs: bool = True


GROUPS: dict[str, type] = {"vision": VisionCfg, "text": TextCfg, "decoders": DecoderCfg, "losses": LossCfg}

# the flat keys of the code before the grouping -> (group, field)
FLAT_KEYS: dict[str, tuple[str, str]] = {
    "vit": ("vision", "vit"),
    "bridge_depth": ("vision", "bridge_depth"),
    "input_size": ("vision", "input_size"),
    "vit_init": ("vision", "init"),
    "image_lr_scale": ("vision", "lr_scale"),
    "text_model": ("text", "model"),
    "text_pretrained": ("text", "pretrained"),
    "bert": ("text", "bert"),
    "context_length": ("text", "context_length"),
    "text_lr_scale": ("text", "lr_scale"),
    "lock_text": ("text", "lock"),
    "lock_text_unlocked_layers": ("text", "lock_unlocked_layers"),
    "lock_text_freeze_layer_norm": ("text", "lock_freeze_layer_norm"),
    "decoder_width": ("decoders", "width"),
    "decoder_depth": ("decoders", "depth"),
    "decoder_heads": ("decoders", "heads"),
    "feature_decoder_depth": ("decoders", "feature_depth"),
    **{name: ("losses", name) for name in (f.name for f in dataclasses.fields(LossCfg))},
}

Cfg = TypeVar("Cfg")


def as_cfg(cls: type[Cfg], value: Cfg | dict[str, Any] | None) -> Cfg:
    """`value` as a `cls`: itself, the defaults (None) or built from a dict (a checkpoint's hyper-parameters);
    an unknown key is an error naming it and the group."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise TypeError(f"{cls.__name__}: expected a mapping or {cls.__name__}, got {type(value).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown key(s) {unknown}; known: {sorted(known)}")
    return cls(**value)


def nest_flat_args(args: dict[str, Any]) -> dict[str, Any]:
    """Flat keyword arguments (`FLAT_KEYS`, e.g. an older checkpoint's hyper-parameters) -> the grouped ones; keys
    already grouped or not in `FLAT_KEYS` pass unchanged (a flat key wins over its group's dict entry)."""
    out: dict[str, Any] = {k: v for k, v in args.items() if k not in FLAT_KEYS}
    for group in GROUPS:
        value = out.get(group)
        out[group] = dict(dataclasses.asdict(value) if dataclasses.is_dataclass(value) else (value or {}))
    for key, value in args.items():
        if key in FLAT_KEYS:
            group, field = FLAT_KEYS[key]
            out[group][field] = value
    return out


def flat_key_errors(model_keys: dict[str, Any] | list[str], where: str) -> list[str]:
    """One line per flat key of the code before the grouping among `model_keys` (a config's `model:` section or
    the `--model.KEY` names given), naming its new key."""
    return [
        f"{where}: model.{key} is now model.{'.'.join(FLAT_KEYS[key])} (MaskedCLIP's settings are grouped: "
        "vision, text, decoders, losses; docs/MASKEDCLIP.md)"
        for key in model_keys
        if key in FLAT_KEYS
    ]
