"""Load BiomedCLIP (or any open_clip model) from a hub id or a local folder, never with random weights.

Specs:
  ``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224`` (needs network or a warm HF cache)
  ``hf-biomedclip:/path/to/folder``: BiomedCLIP in MedCLIP-SAMv2's Hugging Face layout (its fine-tuned model, which
  the MWM release uses), converted to open_clip at load time (`localize.hf_biomedclip`), then loaded as below.
  ``local-dir:/path/to/folder`` (offline). The folder holds, in open_clip's hub layout:
    - ``open_clip_config.json``                       model + preprocess config
    - one of ``open_clip_model.safetensors``, ``open_clip_pytorch_model.safetensors``,
      ``open_clip_pytorch_model.bin``, ``open_clip_pytorch_model.pth``   the CLIP weights
    - for an HF text tower: the BERT ``config.json`` and tokenizer files (``tokenizer.json`` or ``vocab.txt`` ...).

Offline trap: open_clip's HF text tower calls ``AutoConfig.from_pretrained(text_cfg.hf_model_name)`` even for
``local-dir:``, and the hub's config names the hub BERT. We therefore always load from a temporary staging folder
(symlinks to the user's files, only the chosen CLIP weights, and a copy of ``open_clip_config.json``); when the
config's ``hf_model_name`` is not a folder holding ``config.json`` but the user's folder holds one, the copy's
``hf_model_name`` / ``hf_tokenizer_name`` point at the user's folder. The user's folder is never modified.

open_clip itself only *warns* when a ``local-dir:`` folder has no weights (and builds a random model); this
loader raises instead, and asks open_clip for ``require_pretrained=True`` so no path ends with random weights.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from data.hashing import file_sha256
from localize.load_errors import WEIGHT_FILE_ERRORS, describe_load_error

BIOMEDCLIP_HUB_SPEC = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
CLIP_CONFIG_NAME = "open_clip_config.json"
# open_clip's own preference order (factory._find_checkpoint_in_dir), restricted to CLIP checkpoints so that a
# BERT ``model.safetensors`` / ``pytorch_model.bin`` lying in the same folder is never mistaken for CLIP weights.
CLIP_WEIGHT_NAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
)
HF_CONFIG_NAME = "config.json"
TOKENIZER_FILE_NAMES = ("tokenizer.json", "vocab.txt")


class ClipLoadError(RuntimeError):
    """BiomedCLIP could not be loaded; the message names the missing file/folder and how to provide it."""


@dataclass(frozen=True)
class ClipPreprocess:
    """What an image must look like before ``model.encode_image``: RGB, ``image_size``, normalised by mean/std."""

    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    def __call__(self, images: list[Any], device: torch.device | str = "cpu") -> torch.Tensor:
        """Images float in [0,1], (H,W) grey or (H,W,3) RGB, any sizes -> (B,3,*image_size) normalised tensor.

        The whole image is resized (no centre crop, aspect not preserved) so that saliency at CLIP resolution maps
        back onto every pixel of the original image by a plain resize.
        """
        batch = []
        for image in images:
            img = torch.as_tensor(image, dtype=torch.float32)
            img_chw = img.expand(3, *img.shape) if img.ndim == 2 else img.permute(2, 0, 1)
            smooth = self.interpolation in ("bilinear", "bicubic")
            img_1chw = torch.nn.functional.interpolate(
                img_chw[None],
                size=self.image_size,
                mode=self.interpolation,
                align_corners=False if smooth else None,
                antialias=smooth,
            )
            batch.append(img_1chw.clamp(0.0, 1.0))
        img_bchw = torch.cat(batch).to(device)
        mean = torch.tensor(self.mean, device=img_bchw.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=img_bchw.device).view(1, 3, 1, 1)
        return (img_bchw - mean) / std


class LoadedClip(NamedTuple):
    """``model, tokenizer, preprocess = load_biomedclip(...)``; ``source`` is provenance (spec, weights, sha256)."""

    model: torch.nn.Module
    tokenizer: Any
    preprocess: ClipPreprocess
    source: dict[str, str]


def load_biomedclip(spec: str = BIOMEDCLIP_HUB_SPEC, device: torch.device | str = "cpu") -> LoadedClip:
    """Load an open_clip model with its trained weights; eval mode, frozen, on ``device``.

    Raises ClipLoadError naming what is missing (never falls back to random weights).
    """
    import open_clip

    device = torch.device(device)
    if spec.startswith("hf-biomedclip:"):
        return _load_hf_layout(spec, device)
    if spec.startswith("local-dir:"):
        folder = Path(spec[len("local-dir:") :]).expanduser().resolve()
        weights = check_clip_folder(folder)
        with tempfile.TemporaryDirectory(prefix="biomedclip-stage-") as stage:
            staged = _stage_local_folder(folder, weights, Path(stage))
            try:
                model = open_clip.create_model(f"local-dir:{staged}", device=device, require_pretrained=True)
                tokenizer = open_clip.get_tokenizer(f"local-dir:{staged}")
            except WEIGHT_FILE_ERRORS as e:
                raise ClipLoadError(
                    f"Could not load the CLIP model in {folder} from {weights.name}: "
                    f"{describe_load_error(e).rstrip('.')}. {_LOCAL_LAYOUT_HINT}"
                ) from e
        weights_path = weights
    elif spec.startswith("hf-hub:"):
        from open_clip.pretrained import download_pretrained_from_hf

        try:
            weights_path = Path(download_pretrained_from_hf(spec[len("hf-hub:") :]))
            model = open_clip.create_model(spec, device=device, require_pretrained=True)
            tokenizer = open_clip.get_tokenizer(spec)
        except Exception as e:  # hub/network errors come in many types; re-raise all with the offline recipe
            raise ClipLoadError(
                f"Could not load '{spec}' from the Hugging Face hub or its local cache ({type(e).__name__}: {e}). "
                f"Without network, download it once elsewhere and pass 'local-dir:/path/to/folder'. "
                f"{_LOCAL_LAYOUT_HINT}"
            ) from e
    else:
        raise ClipLoadError(
            f"Unknown CLIP spec '{spec}': use 'hf-hub:<org>/<repo>', 'local-dir:/path/to/folder' or "
            "'hf-biomedclip:/path/to/folder'."
        )

    model.eval().requires_grad_(False)
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg["size"]
    preprocess = ClipPreprocess(
        image_size=(size, size) if isinstance(size, int) else tuple(size),
        mean=tuple(float(m) for m in cfg["mean"]),
        std=tuple(float(s) for s in cfg["std"]),
        interpolation=cfg.get("interpolation", "bicubic"),
    )
    source = {"spec": spec, "weights": weights_path.name, "sha256": file_sha256(weights_path)}
    return LoadedClip(model, tokenizer, preprocess, source)


def _load_hf_layout(spec: str, device: torch.device) -> LoadedClip:
    """Convert the HF-layout folder into a staged open_clip folder and load that; provenance names the HF file."""
    from localize.hf_biomedclip import HFBiomedCLIPError, hf_weights_file, stage_open_clip_folder

    folder = Path(spec.removeprefix("hf-biomedclip:")).expanduser().resolve()
    with tempfile.TemporaryDirectory(prefix="biomedclip-hf-") as stage:
        try:
            staged = stage_open_clip_folder(folder, Path(stage))
        except (HFBiomedCLIPError, OSError) as e:
            raise ClipLoadError(f"Could not convert the Hugging Face BiomedCLIP in {folder}: {e}") from e
        model, tokenizer, preprocess, _ = load_biomedclip(f"local-dir:{staged}", device)
    weights = hf_weights_file(folder)
    return LoadedClip(
        model, tokenizer, preprocess, {"spec": spec, "weights": weights.name, "sha256": file_sha256(weights)}
    )


_LOCAL_LAYOUT_HINT = (
    "A 'local-dir:' folder needs open_clip_config.json, the CLIP weights (one of "
    + ", ".join(CLIP_WEIGHT_NAMES)
    + "), and for a Hugging Face text tower (BiomedCLIP's PubMedBERT) that model's config.json and tokenizer files "
    "(tokenizer.json or vocab.txt, tokenizer_config.json, special_tokens_map.json) - e.g. the files of "
    "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 plus config.json of "
    "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract."
)


def check_clip_folder(folder: Path) -> Path:
    """Validate a local-dir folder; returns the CLIP weights file to load."""
    if not folder.is_dir():
        raise ClipLoadError(f"CLIP folder not found: {folder}. {_LOCAL_LAYOUT_HINT}")
    config_path = folder / CLIP_CONFIG_NAME
    if not config_path.is_file():
        raise ClipLoadError(f"Missing {CLIP_CONFIG_NAME} in {folder}. {_LOCAL_LAYOUT_HINT}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["model_cfg"]["text_cfg"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ClipLoadError(f"{config_path} is not an open_clip config with model_cfg.text_cfg ({e}).") from e
    weights = next((folder / n for n in CLIP_WEIGHT_NAMES if (folder / n).is_file()), None)
    if weights is None:
        raise ClipLoadError(
            f"No CLIP weights in {folder}: expected one of {', '.join(CLIP_WEIGHT_NAMES)}. "
            f"Refusing to build an untrained model. {_LOCAL_LAYOUT_HINT}"
        )
    text_cfg = config["model_cfg"]["text_cfg"]
    if "hf_model_name" in text_cfg:
        if not (folder / HF_CONFIG_NAME).is_file() and not (Path(text_cfg["hf_model_name"]) / HF_CONFIG_NAME).is_file():
            raise ClipLoadError(
                f"Missing {HF_CONFIG_NAME} of the text model '{text_cfg['hf_model_name']}' in {folder}: open_clip "
                f"needs it to build the text tower offline. Copy that model's {HF_CONFIG_NAME} into the folder."
            )
        if not any((folder / n).is_file() for n in TOKENIZER_FILE_NAMES):
            raise ClipLoadError(
                f"Missing tokenizer files in {folder}: expected {' or '.join(TOKENIZER_FILE_NAMES)} "
                f"(plus tokenizer_config.json, special_tokens_map.json) of '{text_cfg.get('hf_tokenizer_name')}'."
            )
    return weights


def _stage_local_folder(folder: Path, weights: Path, stage: Path) -> Path:
    """Mirror ``folder`` into ``stage`` with only the chosen weights and an offline-safe open_clip config."""
    config = json.loads((folder / CLIP_CONFIG_NAME).read_text(encoding="utf-8"))
    text_cfg = config["model_cfg"]["text_cfg"]
    named_config = Path(text_cfg.get("hf_model_name", "")) / HF_CONFIG_NAME
    if "hf_model_name" in text_cfg and not named_config.is_file() and (folder / HF_CONFIG_NAME).is_file():
        # A hub name would need network (or a warm cache): the folder's own BERT config/tokenizer are used instead.
        text_cfg["hf_model_name"] = str(folder)
        text_cfg["hf_tokenizer_name"] = str(folder)
    (stage / CLIP_CONFIG_NAME).write_text(json.dumps(config), encoding="utf-8")
    for item in folder.iterdir():
        is_weights_like = item.suffix in (".safetensors", ".bin", ".pth", ".pt")
        if item.name == CLIP_CONFIG_NAME or (is_weights_like and item != weights) or not item.is_file():
            continue
        try:
            (stage / item.name).symlink_to(item)
        except OSError:  # file systems without symlinks
            shutil.copy2(item, stage / item.name)
    return stage
