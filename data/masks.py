"""Mask images on disk (PNG, TIFF, ...): the one reader behind `localize import`, `localize eval` and fine-tuning.

`read_mask_image(path)` -> bool (H, W), True = ROI / foreground:

- a pixel is ROI when ANY of its colour channels is non-zero: a red, green, blue, grey or white mask reads the
  same (OpenCV orders channels BGR, so reading one channel would see a pure red mask as empty);
- any bit depth: 8- or 16-bit integers, floats (non-zero = ROI);
- alpha: a fully transparent pixel (alpha 0) is background whatever its colour, since it is not drawn; any
  other alpha leaves the colour rule in charge (an opaque black pixel is background);
- palette images are judged by the colours they display.

`read_label_image(path)` -> integer (H, W) class ids for multi-class masks: grey values as stored (a grey image
saved as RGB has equal channels and reads the same); transparent pixels are 0. A colour-coded label map (channels
that differ) is refused: its class ids are not the grey values.

A missing file raises FileNotFoundError, an undecodable one MaskReadError (a ValueError); both name the file.
"""

from __future__ import annotations

import os

import cv2
import numpy as np


class MaskReadError(ValueError):
    """A mask file that cannot be read as a mask; str() is '<path>: <reason>'."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def read_mask_image(path: str | os.PathLike) -> np.ndarray:
    """The mask image at `path` as bool (H, W): any non-zero colour channel is ROI, a transparent pixel is not."""
    colour_hwc, opaque_hw = _decode(path)
    return (colour_hwc != 0).any(axis=2) & opaque_hw


def read_label_image(path: str | os.PathLike) -> np.ndarray:
    """The label image at `path` as its integer class ids (H, W); transparent pixels are 0 (background)."""
    colour_hwc, opaque_hw = _decode(path)
    if colour_hwc.dtype.kind not in "iu":
        raise MaskReadError(path, f"class ids must be integers, the image holds {colour_hwc.dtype}")
    if not (colour_hwc == colour_hwc[..., :1]).all():
        raise MaskReadError(path, "a colour-coded label image: class ids must be grey values (equal channels)")
    return np.where(opaque_hw, colour_hwc[..., 0], 0)


def _decode(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(colour channels (H, W, C), opaque (H, W) bool) of the image file at `path`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: mask file not found")
    try:  # np.fromfile + imdecode: cv2.imread cannot open non-ASCII paths on every platform
        pixels = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except (OSError, cv2.error) as e:
        raise MaskReadError(path, f"cannot read the file ({type(e).__name__})") from e
    if pixels is None:
        raise MaskReadError(path, "not a readable image (corrupt, truncated or an unsupported format)")
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    channels = pixels.shape[2]
    if channels in (2, 4):  # grey + alpha, BGR + alpha
        return pixels[..., :-1], pixels[..., -1] != 0
    if channels in (1, 3):
        return pixels, np.ones(pixels.shape[:2], dtype=bool)
    raise MaskReadError(path, f"unsupported channel count ({channels})")
