"""What every reader shares: the Frame it yields, the UnreadableImage it raises, and the decoding guard."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np

NiftiVolumes = Literal["all", "first"]


class UnreadableImage(Exception):
    """A file that cannot be decoded; str() is '<path>: <reason>', and the reason never holds a tag value."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True, eq=False)
class Frame:
    """One 2-D image of a file.

    pixels:        float32 (H, W) grey or (H, W, 3) RGB in physical units: CT in HU (rescale applied),
                   MONOCHROME1 already inverted; NaN/Inf are left for `intensity.normalize` to clean.
    modality:      one of MODALITIES.
    frame:         DICOM frame / TIFF page index; NIfTI slice index (4-D: volume * n_slices + slice); else 0.
    source_format: 'dicom' | 'nifti' | 'png' | 'jpeg' | 'tiff'.
    """

    pixels: np.ndarray
    modality: str
    frame: int
    source_format: str


def describe_error(exc: BaseException) -> str:
    """A one-line, bounded description of a decoder's exception (decoders only see pixel data)."""
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextmanager
def decoding(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Turn a library's decoding error into UnreadableImage('<what>: <error>')."""
    try:
        yield
    except (UnreadableImage, IndexError):
        raise
    except Exception as exc:  # noqa: BLE001 - every decoder failure is a reason, not a crash
        raise UnreadableImage(path, f"{what}: {describe_error(exc)}") from exc


def as_float32(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)
