"""open_clip folders in BiomedCLIP's hub layout (timm ViT + Hugging Face BERT): the writer and the loader.

Writer (`write_biomedclip_folder`, `clip_config`, `write_clip_config`, `write_clip_weights`, `write_tokenizer`):
shared by whoever writes such a folder: the localizer's stand-ins, the benchmarks' real-size models and the
MaskedCLIP export. A folder holds::

    open_clip_config.json  open_clip_model.safetensors          the CLIP config and weights
    config.json  vocab.txt  tokenizer.json  tokenizer_config.json  the BERT config and tokenizer files

The config's `text_cfg.hf_model_name` / `hf_tokenizer_name` are ".", the folder itself (a relative name is read
relative to the folder, so the folder can move and its config holds no absolute path), so open_clip finds the
BERT config and tokenizer offline (docs/MODELS.md: the text tower asks the hub for its config even for `local-dir:`).

Loader (`load_open_clip(spec, device) -> LoadedClip(model, tokenizer, preprocess, source)`), for `localize` (its
CLIP) and `finetune zeroshot`, never with random weights. Specs:

  ``local-dir:/path/to/folder`` (offline). The folder holds, in open_clip's hub layout:
    - ``open_clip_config.json``                       model + preprocess config
    - one of ``open_clip_model.safetensors``, ``open_clip_pytorch_model.safetensors``,
      ``open_clip_pytorch_model.bin``, ``open_clip_pytorch_model.pth``   the CLIP weights
    - for an HF text tower: the BERT ``config.json`` and tokenizer files (``tokenizer.json`` or ``vocab.txt`` ...).
  ``hf-hub:<org>/<repo>`` (needs network or a warm HF cache), e.g. BiomedCLIP's hub id.

Offline trap: open_clip's HF text tower calls ``AutoConfig.from_pretrained(text_cfg.hf_model_name)`` even for
``local-dir:``, and the hub's config names the hub BERT. We therefore always load from a temporary staging folder
(symlinks to the user's files, only the chosen CLIP weights, and a copy of ``open_clip_config.json``); when the
config's ``hf_model_name`` is not a folder holding ``config.json`` but the user's folder holds one, the copy's
``hf_model_name`` / ``hf_tokenizer_name`` point at the user's folder. The user's folder is never modified.

open_clip itself only *warns* when a ``local-dir:`` folder has no weights (and builds a random model); this
loader raises instead, and asks open_clip for ``require_pretrained=True`` so no path ends with random weights.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from data.hashing import file_sha256
from data.load_errors import WEIGHT_FILE_ERRORS, describe_load_error

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CLIP_CONFIG_NAME = "open_clip_config.json"
CLIP_WEIGHTS_NAME = "open_clip_model.safetensors"
# open_clip's own preference order (factory._find_checkpoint_in_dir), restricted to CLIP checkpoints so that a
# BERT ``model.safetensors`` / ``pytorch_model.bin`` lying in the same folder is never mistaken for CLIP weights.
CLIP_WEIGHT_NAMES = (
    CLIP_WEIGHTS_NAME,
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
)
HF_CONFIG_NAME = "config.json"
TOKENIZER_FILE_NAMES = ("tokenizer.json", "vocab.txt")


def bert_vocabulary(words: Iterable[str] = ()) -> list[str]:
    """A WordPiece vocabulary: BERT's special tokens, letters and digits (alone and as `##` continuations, so
    any lower-case word tokenises) and then `words` (lower-cased, deduplicated, sorted)."""
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    extra = sorted({w.lower() for w in words} - set(chars))
    return [*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars), *extra]


def bert_tokenizer(vocab: list[str]):
    """A lower-casing `transformers.BertTokenizerFast` over `vocab` (held in memory)."""
    from transformers import BertTokenizerFast

    return BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)


def write_tokenizer(folder: Path, tokenizer) -> None:
    """The tokenizer's files as the hub repos hold them (tokenizer.json, tokenizer_config.json, vocab.txt)."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    (folder / "vocab.txt").write_text("".join(token + "\n" for token, _ in vocab), encoding="utf-8")


def clip_config(
    folder: Path,
    *,
    embed_dim: int,
    vision_cfg: Mapping[str, Any],
    context_length: int,
    mean: tuple[float, ...] = OPENAI_MEAN,
    std: tuple[float, ...] = OPENAI_STD,
) -> dict[str, Any]:
    """open_clip_config.json of a BiomedCLIP-layout folder: HF BERT text tower (mlp proj, CLS pooler) whose
    config and tokenizer are `folder` itself."""
    return {
        "model_cfg": {
            "embed_dim": embed_dim,
            "vision_cfg": dict(vision_cfg),
            "text_cfg": {
                "hf_model_name": ".",  # the folder itself (relative names are read relative to it)
                "hf_tokenizer_name": ".",
                "hf_proj_type": "mlp",
                "hf_pooler_type": "cls_last_hidden_state_pooler",
                "context_length": context_length,
            },
        },
        "preprocess_cfg": {"mean": list(mean), "std": list(std)},
    }


def with_text_folder(config: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """`config` (as `clip_config` writes it) with the text tower's names pointing at `folder` by its absolute path:
    what open_clip needs to build the model outside this loader."""
    text_cfg = {**config["model_cfg"]["text_cfg"]}
    text_cfg["hf_model_name"] = text_cfg["hf_tokenizer_name"] = str(Path(folder).resolve())
    return {**config, "model_cfg": {**config["model_cfg"], "text_cfg": text_cfg}}


def write_clip_config(folder: Path, config: Mapping[str, Any]) -> Path:
    path = folder / CLIP_CONFIG_NAME
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


def write_clip_weights(folder: Path, state_dict: Mapping[str, Any]) -> Path:
    """The CLIP state dict as `open_clip_model.safetensors` (the first name open_clip looks for)."""
    from safetensors.torch import save_file

    path = folder / CLIP_WEIGHTS_NAME
    save_file({k: v.detach().contiguous() for k, v in state_dict.items()}, path)
    return path


def write_biomedclip_folder(
    folder: Path,
    vocabulary: list[str],
    *,
    embed_dim: int,
    vision_cfg: dict[str, Any],
    bert: dict[str, Any],
    context_length: int,
) -> Path:
    """A local-dir folder in BiomedCLIP's layout (timm ViT + HF BERT, mlp proj, CLS pooler) with random weights,
    created by open_clip from its own config; the vocabulary is built from `vocabulary`'s words."""
    import open_clip
    from transformers import BertConfig

    folder.mkdir(parents=True, exist_ok=True)
    vocab = bert_vocabulary(w for text in vocabulary for w in text.lower().split())
    write_tokenizer(folder, bert_tokenizer(vocab))
    BertConfig(vocab_size=len(vocab), **bert).save_pretrained(folder)
    config = clip_config(folder, embed_dim=embed_dim, vision_cfg=vision_cfg, context_length=context_length)
    write_clip_config(folder, with_text_folder(config, folder))  # open_clip reads names from the working directory
    # No weights file yet, so open_clip builds a randomly initialised model from the config (what we want here;
    # its warnings about that are dropped).
    with _without_log_records("no CLIP weights found", "initialized randomly"):
        model = open_clip.create_model(f"local-dir:{folder}", pretrained_text=False)
    write_clip_config(folder, config)  # the folder-relative names: the folder can move
    write_clip_weights(folder, model.state_dict())
    return folder


@contextlib.contextmanager
def _without_log_records(*fragments: str) -> Iterator[None]:
    """Drop root-logger records containing any of ``fragments`` (open_clip logs through the root logger)."""
    drop = logging.Filter()
    drop.filter = lambda record: not any(f in record.getMessage() for f in fragments)
    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


# ---------------------------------------------------------------------------------------------------- loader
class ClipLoadError(RuntimeError):
    """A CLIP model could not be loaded; the message names the missing file/folder and how to provide it."""


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
    """``model, tokenizer, preprocess, source = load_open_clip(...)``; ``source`` is provenance (spec, weights,
    sha256)."""

    model: torch.nn.Module
    tokenizer: Any
    preprocess: ClipPreprocess
    source: dict[str, str]


def load_open_clip(spec: str, device: torch.device | str = "cpu") -> LoadedClip:
    """Load an open_clip model (``local-dir:`` or ``hf-hub:``, see the module docstring) with its trained weights;
    eval mode, frozen, on ``device``. Raises ClipLoadError naming what is missing (never random weights)."""
    import open_clip

    device = torch.device(device)
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
                    f"{describe_load_error(e).rstrip('.')}. {LOCAL_LAYOUT_HINT}"
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
                f"{LOCAL_LAYOUT_HINT}"
            ) from e
    else:
        raise ClipLoadError(f"Unknown CLIP spec '{spec}': use 'hf-hub:<org>/<repo>' or 'local-dir:/path/to/folder'.")

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


LOCAL_LAYOUT_HINT = (
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
        raise ClipLoadError(f"CLIP folder not found: {folder}. {LOCAL_LAYOUT_HINT}")
    config_path = folder / CLIP_CONFIG_NAME
    if not config_path.is_file():
        raise ClipLoadError(f"Missing {CLIP_CONFIG_NAME} in {folder}. {LOCAL_LAYOUT_HINT}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["model_cfg"]["text_cfg"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ClipLoadError(f"{config_path} is not an open_clip config with model_cfg.text_cfg ({e}).") from e
    weights = next((folder / n for n in CLIP_WEIGHT_NAMES if (folder / n).is_file()), None)
    if weights is None:
        raise ClipLoadError(
            f"No CLIP weights in {folder}: expected one of {', '.join(CLIP_WEIGHT_NAMES)}. "
            f"Refusing to build an untrained model. {LOCAL_LAYOUT_HINT}"
        )
    text_cfg = config["model_cfg"]["text_cfg"]
    if "hf_model_name" in text_cfg:
        named_config = _text_folder(folder, text_cfg["hf_model_name"]) / HF_CONFIG_NAME
        if not (folder / HF_CONFIG_NAME).is_file() and not named_config.is_file():
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


def _text_folder(folder: Path, name: Any) -> Path:
    """The folder a text config's `hf_model_name` / `hf_tokenizer_name` names: a relative name that is a folder
    inside `folder` (this writer's ".") is that folder; anything else as written (a hub id, an absolute path)."""
    given = Path(str(name or ""))
    return folder / given if not given.is_absolute() and name and (folder / given).is_dir() else given


def _stage_local_folder(folder: Path, weights: Path, stage: Path) -> Path:
    """Mirror ``folder`` into ``stage`` with only the chosen weights and an offline-safe open_clip config."""
    config = json.loads((folder / CLIP_CONFIG_NAME).read_text(encoding="utf-8"))
    text_cfg = config["model_cfg"]["text_cfg"]
    if "hf_model_name" in text_cfg:
        for key in ("hf_model_name", "hf_tokenizer_name"):  # names relative to the folder: absolute for open_clip
            named = _text_folder(folder, text_cfg.get(key))
            if key in text_cfg and named != Path(str(text_cfg[key])):
                text_cfg[key] = str(named.resolve())
        if not (Path(text_cfg["hf_model_name"]) / HF_CONFIG_NAME).is_file() and (folder / HF_CONFIG_NAME).is_file():
            # A hub name would need network (or a warm cache): the folder's own BERT config/tokenizer are used.
            text_cfg["hf_model_name"] = text_cfg["hf_tokenizer_name"] = str(folder.resolve())
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
