"""Pretrained starts of the image tower: the whole timm ViT `vit` (E's blocks, then B's) from a timm state dict or
from an open_clip folder in BiomedCLIP's layout (its `visual.trunk`, and `visual.head.proj` as P_I)."""

from __future__ import annotations

import pathlib
from pathlib import Path
from typing import NamedTuple

import torch

from data.clip_folder import CLIP_WEIGHT_NAMES
from pretrain.maskedclip.bridge import Bridge
from pretrain.maskedclip.image_encoder import ImageEncoder

TRUNK_PREFIX = "visual.trunk."
PROJ_KEY = "visual.head.proj.weight"


class VitWeights(NamedTuple):
    trunk: dict[str, torch.Tensor]  # the whole ViT's state dict (timm names), classifier head left out
    proj: torch.Tensor | None  # P_I's weight when the source is a CLIP


def read_vit_weights(source: str) -> VitWeights:
    """`source`: an open_clip folder (`local-dir:DIR` or `DIR`, weights `open_clip_model.safetensors` or another
    name open_clip reads) or a timm state dict file (.safetensors, or .pt / .pth / .bin read weights-only, a
    `state_dict` / `model` entry unwrapped)."""
    path = Path(source.removeprefix("local-dir:")).expanduser()
    if path.is_dir():
        files = [path / name for name in CLIP_WEIGHT_NAMES if (path / name).is_file()]
        if not files:
            raise FileNotFoundError(f"{path}: no open_clip weights here (one of {list(CLIP_WEIGHT_NAMES)})")
        state = _load(files[0])
        trunk = {k[len(TRUNK_PREFIX) :]: v for k, v in state.items() if k.startswith(TRUNK_PREFIX)}
        if not trunk:
            raise ValueError(f"{files[0]}: no timm image tower ({TRUNK_PREFIX}*): not a BiomedCLIP-layout model")
        return VitWeights(_without_head(trunk), state.get(PROJ_KEY))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image tower weights not found (a timm state dict or an open_clip folder)")
    state = _load(path)
    for key in ("state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
    return VitWeights(_without_head(state), None)


def load_vit_weights(encoder: ImageEncoder, bridge: Bridge, weights: VitWeights, source: str) -> None:
    """Put the whole ViT's weights into E (blocks before `bridge.first_block`, embeddings, its norms) and B (the
    last blocks, the final norm, fc_norm; P_I when given). Strict: a missing, unexpected or misshapen key is an
    error naming `source`."""
    first = bridge.first_block
    encoder_state, bridge_state = {}, {}
    for key, value in weights.trunk.items():
        if key.startswith("blocks."):
            index, rest = key[len("blocks.") :].split(".", 1)
            if int(index) >= first:
                bridge_state[f"blocks.{int(index) - first}.{rest}"] = value
                continue
        elif key.startswith(("norm.", "fc_norm.")):
            bridge_state[key] = value
        encoder_state[key] = value  # the encoder's own final norm starts as the ViT's
    if weights.proj is not None:
        bridge_state["proj.weight"] = weights.proj
    try:
        encoder.vit.load_state_dict(encoder_state, strict=True)
        missing, unexpected = bridge.load_state_dict(bridge_state, strict=False)
    except RuntimeError as err:
        raise ValueError(f"{source}: does not fit the ViT {type(encoder.vit).__name__} here: {err}") from None
    if unexpected or set(missing) - {"proj.weight"}:
        raise ValueError(f"{source}: bridge keys missing {missing} / unexpected {unexpected}")


def _load(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        with torch.serialization.safe_globals([pathlib.PosixPath, pathlib.WindowsPath]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file and the reason
        raise ValueError(f"{path}: cannot load as a weights-only state dict ({type(err).__name__})") from err


def _without_head(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("head.")}
