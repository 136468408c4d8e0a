"""Byte-stable writers: the same array always gives the same file (gzip without a timestamp)."""

from __future__ import annotations

import gzip
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np


def write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_png(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"{path}: cv2.imwrite failed")


def write_nifti(path: Path, vol_hwk: np.ndarray) -> None:
    """int16 volume with a 1 mm RAS affine; gzip with mtime 0 so that reruns are byte-identical."""
    affine = np.eye(4)
    affine[:3, 3] = -(np.array(vol_hwk.shape) - 1) / 2  # world origin at the volume centre
    img = nib.Nifti1Image(vol_hwk, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header["descrip"] = b"MWM synthetic sample"
    write_bytes(path, gzip.compress(img.to_bytes(), compresslevel=6, mtime=0))
