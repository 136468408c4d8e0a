"""Load BiomedCLIP (or any open_clip model) as localize's CLIP, never with random weights.

Specs:
  ``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224`` (needs network or a warm HF cache) and
  ``local-dir:/path/to/folder`` (offline): the open_clip folder loader of `data.clip_folder` (`load_open_clip`,
  its module docstring has the layout and the offline trap it works around).
  ``hf-biomedclip:/path/to/folder``: BiomedCLIP in MedCLIP-SAMv2's Hugging Face layout (its fine-tuned model, which
  the MWM release uses), converted to open_clip at load time (`localize.hf_biomedclip`), then loaded as local-dir.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from data.clip_folder import ClipLoadError, ClipPreprocess, LoadedClip, check_clip_folder, load_open_clip
from data.hashing import file_sha256

__all__ = [
    "BIOMEDCLIP_HUB_SPEC",
    "ClipLoadError",
    "ClipPreprocess",
    "LoadedClip",
    "check_clip_folder",
    "hub_revision",
    "file_sha256",
    "load_biomedclip",
]

BIOMEDCLIP_HUB_SPEC = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"


def hub_revision(spec: str, cache_dir: str | Path | None = None) -> str | None:
    """The commit a `hf-hub:ORG/NAME` model resolved to on this machine: the Hugging Face cache's `refs/main`
    (written when the model was downloaded), or None when the model is not in this machine's cache (or the spec is
    not a hub id). `cache_dir`: the hub cache (default: huggingface_hub's, which HF_HUB_CACHE / HF_HOME set)."""
    if not spec.startswith("hf-hub:"):
        return None
    if cache_dir is None:
        from huggingface_hub import constants

        cache_dir = constants.HF_HUB_CACHE
    repo = spec.removeprefix("hf-hub:").split("@")[0]
    ref = Path(cache_dir) / f"models--{repo.replace('/', '--')}" / "refs" / "main"
    try:
        return ref.read_text().strip() or None
    except OSError:
        return None


def load_biomedclip(spec: str = BIOMEDCLIP_HUB_SPEC, device: torch.device | str = "cpu") -> LoadedClip:
    """Load an open_clip model with its trained weights; eval mode, frozen, on ``device``.

    Raises ClipLoadError naming what is missing (never falls back to random weights).
    """
    if spec.startswith("hf-biomedclip:"):
        return _load_hf_layout(spec, torch.device(device))
    if spec.startswith(("local-dir:", "hf-hub:")):
        return load_open_clip(spec, device)
    raise ClipLoadError(
        f"Unknown CLIP spec '{spec}': use 'hf-hub:<org>/<repo>', 'local-dir:/path/to/folder' or "
        "'hf-biomedclip:/path/to/folder'."
    )


def _load_hf_layout(spec: str, device: torch.device) -> LoadedClip:
    """Convert the HF-layout folder into a staged open_clip folder and load that; provenance names the HF file."""
    from localize.hf_biomedclip import HFBiomedCLIPError, hf_weights_file, stage_open_clip_folder

    folder = Path(spec.removeprefix("hf-biomedclip:")).expanduser().resolve()
    with tempfile.TemporaryDirectory(prefix="biomedclip-hf-") as stage:
        try:
            staged = stage_open_clip_folder(folder, Path(stage))
        except (HFBiomedCLIPError, OSError) as e:
            raise ClipLoadError(f"Could not convert the Hugging Face BiomedCLIP in {folder}: {e}") from e
        model, tokenizer, preprocess, _ = load_open_clip(f"local-dir:{staged}", device)
    weights = hf_weights_file(folder)
    return LoadedClip(
        model, tokenizer, preprocess, {"spec": spec, "weights": weights.name, "sha256": file_sha256(weights)}
    )
