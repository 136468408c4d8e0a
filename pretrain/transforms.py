"""Joint image + ROI transforms of pretraining: the MWM fork's resize + flip, or SparK's random resized crop.

Geometric v2 transforms move a tv_tensors.Mask with its image and resize it with nearest interpolation, so the
ROI stays aligned and binary. Normalisation is not done here: `MaskedPretraining` normalises on the device
with the statistics the data module provides (`pretrain.pixel_stats`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torchvision.transforms import InterpolationMode, v2

Augment = Literal["resize", "random_resized_crop"]
Interpolation = Literal["bilinear", "bicubic"]

# The references' resampling: the MWM fork resizes with OpenCV's INTER_LINEAR (no antialiasing), SparK crops
# PIL images with bicubic interpolation (PIL antialiases when it downsamples).
_REFERENCE = {"resize": ("bilinear", False), "random_resized_crop": ("bicubic", True)}


def resampling(augment: Augment, interpolation: Interpolation | None, antialias: bool | None) -> tuple[str, bool]:
    """(interpolation, antialias) of `augment`, each None taken from the reference pipeline."""
    if augment not in _REFERENCE:
        raise ValueError(f"unknown augment {augment!r}; use 'resize' or 'random_resized_crop'")
    ref_interpolation, ref_antialias = _REFERENCE[augment]
    return interpolation or ref_interpolation, ref_antialias if antialias is None else antialias


def train_transform(
    input_size: int,
    augment: Augment = "resize",
    *,
    scale: Sequence[float] = (0.67, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    interpolation: Interpolation | None = None,
    antialias: bool | None = None,
) -> v2.Transform:
    """The training transform, applied alike to the image and its ROI.

    "resize" (the MWM fork, `utils/custom.py`): resize to `input_size`² (aspect not kept), horizontal flip.
    "random_resized_crop" (SparK, `utils/imagenet.py`): crop of `scale` area and `ratio` aspect resized to
    `input_size`², horizontal flip. `interpolation` / `antialias` default to each reference's.
    """
    mode, antialias = resampling(augment, interpolation, antialias)
    how = {"interpolation": InterpolationMode(mode), "antialias": antialias}
    if augment == "resize":
        geometric = v2.Resize((input_size, input_size), **how)
    else:
        geometric = v2.RandomResizedCrop(input_size, scale=tuple(scale), ratio=tuple(ratio), **how)
    return v2.Compose([geometric, v2.RandomHorizontalFlip(hflip)])


def square_resize(
    input_size: int,
    augment: Augment = "resize",
    interpolation: Interpolation | None = None,
    antialias: bool | None = None,
) -> v2.Transform:
    """Resize to `input_size`² (aspect not kept) with `augment`'s resampling: the MWM fork's resize, which its
    dataset statistics are computed after."""
    mode, antialias = resampling(augment, interpolation, antialias)
    return v2.Resize((input_size, input_size), interpolation=InterpolationMode(mode), antialias=antialias)


def eval_transform(
    input_size: int,
    augment: Augment = "resize",
    interpolation: Interpolation | None = None,
    antialias: bool | None = None,
) -> v2.Transform:
    """Deterministic counterpart: "resize" resizes to `input_size`²; "random_resized_crop" resizes the shorter
    side to `input_size` and crops the centre."""
    if augment == "resize":
        return square_resize(input_size, augment, interpolation, antialias)
    mode, antialias = resampling(augment, interpolation, antialias)
    resize = v2.Resize(input_size, interpolation=InterpolationMode(mode), antialias=antialias)
    return v2.Compose([resize, v2.CenterCrop(input_size)])
