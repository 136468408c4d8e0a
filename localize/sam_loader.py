"""Load Segment Anything from a checkpoint: the registry architectures or a custom one described next to it.

Specs:
  ``'vit_b:/path/sam_vit_b_01ec64.pth'`` (also vit_l, vit_h) or ``{'arch': 'vit_b', 'checkpoint': '/path/...'}``
  ``'custom:/path/sam_tiny.pth'`` or ``{'arch': 'custom', 'checkpoint': ...}``: the architecture is read from
  ``sam_tiny.json`` (or ``.yaml``/``.yml``) beside the checkpoint, with the constructor arguments of
  segment_anything's ImageEncoderViT / PromptEncoder / MaskDecoder (+ TwoWayTransformer); see
  ``localize.standins.TINY_SAM_ARCH`` for a complete example (the 77k-parameter stand-in).

Weights are always read with ``torch.load(..., map_location='cpu', weights_only=True)`` and loaded strictly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml
from segment_anything import sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from data.load_errors import WEIGHT_FILE_ERRORS, describe_load_error

REGISTRY_ARCHS = ("vit_b", "vit_l", "vit_h")
CUSTOM_ARCH = "custom"
SIDECAR_SUFFIXES = (".json", ".yaml", ".yml")


class SamLoadError(RuntimeError):
    """SAM could not be loaded; the message names the file and the reason."""


def parse_sam_spec(spec: str | Mapping[str, Any]) -> tuple[str, Path]:
    """``'arch:/path'`` or ``{'arch', 'checkpoint'}`` -> (arch, checkpoint path)."""
    if isinstance(spec, Mapping):
        if "checkpoint" not in spec:
            raise SamLoadError(f"SAM spec {dict(spec)} has no 'checkpoint'.")
        arch, ckpt = str(spec.get("arch", CUSTOM_ARCH)), str(spec["checkpoint"])
    else:
        arch, sep, ckpt = str(spec).partition(":")
        if not sep or arch not in (*REGISTRY_ARCHS, CUSTOM_ARCH):
            raise SamLoadError(
                f"SAM spec '{spec}' must be 'ARCH:/path/to/checkpoint.pth' with ARCH one of "
                f"{', '.join((*REGISTRY_ARCHS, CUSTOM_ARCH))}."
            )
    if arch not in (*REGISTRY_ARCHS, CUSTOM_ARCH):
        raise SamLoadError(f"Unknown SAM arch '{arch}': use one of {', '.join((*REGISTRY_ARCHS, CUSTOM_ARCH))}.")
    return arch, Path(ckpt).expanduser()


def find_sidecar(checkpoint: Path) -> Path | None:
    """The architecture file next to a custom checkpoint (same stem, .json/.yaml/.yml), if any."""
    return next((checkpoint.with_suffix(s) for s in SIDECAR_SUFFIXES if checkpoint.with_suffix(s).is_file()), None)


def build_custom_sam(arch: Mapping[str, Any], source: str = "<config>") -> Sam:
    """A Sam from an architecture mapping (schema in the module docstring); ``source`` names it in errors."""
    try:
        enc = dict(arch["image_encoder"])
        prm = dict(arch["prompt_encoder"])
        dec = dict(arch["mask_decoder"])
        two_way = dict(dec.pop("transformer"))
    except (KeyError, TypeError) as e:
        raise SamLoadError(f"{source}: needs image_encoder, prompt_encoder, mask_decoder.transformer ({e}).") from e
    img_size, patch = int(enc.get("img_size", 1024)), int(enc.get("patch_size", 16))
    out_chans = int(enc.get("out_chans", 256))
    dims = {
        "image_encoder.out_chans": out_chans,
        "prompt_encoder.embed_dim": prm.get("embed_dim"),
        "mask_decoder.transformer_dim": dec.get("transformer_dim"),
        "mask_decoder.transformer.embedding_dim": two_way.get("embedding_dim"),
    }
    if len(set(dims.values())) != 1:
        raise SamLoadError(f"{source}: these widths must be equal: {dims}.")
    if img_size % patch:
        raise SamLoadError(f"{source}: image_encoder.img_size {img_size} is not divisible by patch_size {patch}.")
    if tuple(prm.get("image_embedding_size", ())) != (img_size // patch,) * 2:
        raise SamLoadError(f"{source}: prompt_encoder.image_embedding_size must be {[img_size // patch] * 2}.")
    if tuple(prm.get("input_image_size", ())) != (img_size, img_size):
        raise SamLoadError(f"{source}: prompt_encoder.input_image_size must be {[img_size, img_size]}.")
    norm_eps = float(enc.pop("norm_eps", 1e-6))
    enc["global_attn_indexes"] = tuple(enc.get("global_attn_indexes", ()))
    prm["image_embedding_size"] = tuple(prm["image_embedding_size"])
    prm["input_image_size"] = tuple(prm["input_image_size"])
    try:
        sam = Sam(
            image_encoder=ImageEncoderViT(**enc, norm_layer=partial(torch.nn.LayerNorm, eps=norm_eps)),
            prompt_encoder=PromptEncoder(**prm),
            mask_decoder=MaskDecoder(**dec, transformer=TwoWayTransformer(**two_way)),
            pixel_mean=list(arch.get("pixel_mean", [123.675, 116.28, 103.53])),
            pixel_std=list(arch.get("pixel_std", [58.395, 57.12, 57.375])),
        )
    except TypeError as e:  # unknown constructor argument
        raise SamLoadError(f"{source}: {e}.") from e
    return sam


def read_sidecar(path: Path) -> dict[str, Any]:
    """Parse a custom-SAM architecture file (JSON or YAML)."""
    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise SamLoadError(f"Cannot read SAM architecture file {path}: {e}") from e


def load_sam(spec: str | Mapping[str, Any], device: torch.device | str = "cpu") -> Sam:
    """Build SAM for ``spec`` and load its checkpoint strictly; eval mode, frozen, on ``device``."""
    arch, ckpt = parse_sam_spec(spec)
    if not ckpt.is_file():
        raise SamLoadError(
            f"SAM checkpoint not found: {ckpt}. Download the official {arch} checkpoint "
            f"(github.com/facebookresearch/segment-anything#model-checkpoints) or write stand-ins with "
            f"`python -m localize stand-ins --out DIR`."
        )
    if arch == CUSTOM_ARCH:
        sidecar = find_sidecar(ckpt)
        if sidecar is None:
            raise SamLoadError(
                f"Custom SAM checkpoint {ckpt} needs its architecture file next to it: "
                f"{' or '.join(ckpt.with_suffix(s).name for s in SIDECAR_SUFFIXES)} in {ckpt.parent}."
            )
        sam = build_custom_sam(read_sidecar(sidecar), source=str(sidecar))
    else:
        sam = sam_model_registry[arch](checkpoint=None)
    try:
        state_dict = torch.load(ckpt, map_location="cpu", weights_only=True)
        sam.load_state_dict(state_dict, strict=True)
    except WEIGHT_FILE_ERRORS as e:
        raise SamLoadError(f"Cannot load SAM weights from {ckpt} into arch '{arch}': {describe_load_error(e)}") from e
    return sam.to(device).eval().requires_grad_(False)
