"""Model loading for localization: BiomedCLIP (open_clip), SAM (segment_anything) and their tiny stand-ins.

``load_biomedclip(spec, device) -> (model, tokenizer, preprocess, source)``, ``load_sam(spec, device) -> Sam``,
``write_standins(out_dir) -> Path`` (the stand-ins' ``localize.yaml``). Details in the modules re-exported here.
"""

from __future__ import annotations

import torch

from data.hashing import file_sha256
from localize.clip_loader import (
    BIOMEDCLIP_HUB_SPEC,
    ClipLoadError,
    ClipPreprocess,
    LoadedClip,
    load_biomedclip,
)
from localize.sam_loader import SamLoadError, load_sam, parse_sam_spec
from localize.standins import standins_main, write_standins

__all__ = [
    "BIOMEDCLIP_HUB_SPEC",
    "ClipLoadError",
    "ClipPreprocess",
    "LoadedClip",
    "SamLoadError",
    "default_device",
    "file_sha256",
    "load_biomedclip",
    "load_sam",
    "parse_sam_spec",
    "standins_main",
    "write_standins",
]


def default_device() -> torch.device:
    """The GPU when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
