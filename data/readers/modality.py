"""Modality names: DICOM Modality codes and path tokens -> one of MODALITIES."""

from __future__ import annotations

import re

MODALITIES: tuple[str, ...] = ("CT", "MR", "XR", "MG", "US", "OT")

# DICOM Modality codes -> our normalised modality; codes not listed become 'OT'.
_DICOM_MODALITY = {
    "CT": "CT",
    "MR": "MR",
    "CR": "XR",
    "DX": "XR",
    "DR": "XR",
    "RG": "XR",
    "RF": "XR",
    "XA": "XR",
    "PX": "XR",
    "XR": "XR",
    "MG": "MG",
    "US": "US",
    "IVUS": "US",
}
# Path tokens -> modality, for files that carry no modality of their own.
_PATH_TOKENS = {
    "ct": "CT",
    "cta": "CT",
    "mr": "MR",
    "mri": "MR",
    "t1": "MR",
    "t1w": "MR",
    "t1ce": "MR",
    "t2": "MR",
    "t2w": "MR",
    "flair": "MR",
    "xray": "XR",
    "xr": "XR",
    "cxr": "XR",
    "cr": "XR",
    "dx": "XR",
    "radiograph": "XR",
    "mammo": "MG",
    "mammography": "MG",
    "ultrasound": "US",
}


def infer_modality(relpath: str) -> str:
    """The modality a non-DICOM file's path names, by tokens split on / _ - . (file name first); else 'OT'.

    'ct' -> CT; 'mr', 'mri', 't1', 't2', 'flair' (and 't1w', 't1ce', 't2w') -> MR; 'xray', 'xr', 'cxr', 'cr',
    'dx', 'radiograph' (and 'x-ray') -> XR; 'mammo', 'mammography' -> MG; 'ultrasound' -> US.
    """
    text = str(relpath).lower().replace("\\", "/").replace("x-ray", "xray")
    for token in reversed(re.split(r"[/_\-.]+", text)):
        if token in _PATH_TOKENS:
            return _PATH_TOKENS[token]
    return "OT"


def normalize_modality(code: str | None) -> str:
    """A DICOM Modality code (or one of MODALITIES) -> one of MODALITIES."""
    return _DICOM_MODALITY.get(str(code or "").strip().upper(), "OT")
