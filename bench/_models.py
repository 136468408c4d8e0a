"""Real-size, random-weight BiomedCLIP and SAM checkpoints for timing (no trained weights needed to measure speed).

``write_real_size_models(out_dir, sam_arch="vit_b") -> (clip_spec, sam_spec)`` writes, in the same on-disk layouts a
user's downloaded checkpoints have, and returns the specs the project's loaders take (``load_biomedclip`` /
``load_sam``):

    biomedclip/   open_clip_config.json  open_clip_model.safetensors   BiomedCLIP's architecture: timm
                  config.json  vocab.txt  tokenizer.json ...           vit_base_patch16_224 (pool '', linear proj),
                                                                       BERT-base text tower (mlp proj, CLS pooler,
                                                                       context 256), embed_dim 512
    sam_vit_b_random.pth                                               segment_anything's vit_b (or vit_l / vit_h:
                                                                       `sam_arch`), built without a checkpoint

Only the text vocabulary is cut (a few hundred tokens built from the prompts, as the stand-ins do): its size only
changes the embedding lookup, not the cost of a forward pass. Outputs are meaningless; use for timing only.
"""

from __future__ import annotations

from pathlib import Path

import torch

from data.clip_folder import write_biomedclip_folder
from localize.prompts import DEFAULT_PROMPTS_PATH, PromptConfig

# microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224's open_clip_config.json (model part).
BIOMEDCLIP_EMBED_DIM = 512
BIOMEDCLIP_VISION_CFG = {
    "timm_model_name": "vit_base_patch16_224",
    "timm_model_pretrained": False,
    "timm_pool": "",
    "timm_proj": "linear",
    "image_size": 224,
}
BIOMEDCLIP_CONTEXT_LENGTH = 256
# BiomedBERT-base (PubMedBERT) sizes, vocabulary aside.
BERT_BASE = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
}


def write_real_size_models(out_dir: str | Path, seed: int = 0, sam_arch: str = "vit_b") -> tuple[str, str]:
    """Write random-weight BiomedCLIP (ViT-B/16 + BERT-base) and SAM `sam_arch` (vit_b, vit_l or vit_h);
    returns (clip spec, sam spec)."""
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream untouched
        torch.manual_seed(seed)
        clip_dir = write_real_size_biomedclip(out / "biomedclip", PromptConfig.load(DEFAULT_PROMPTS_PATH).all_prompts())
        sam_ckpt = write_random_sam(out / f"sam_{sam_arch}_random.pth", sam_arch)
    return f"local-dir:{clip_dir}", f"{sam_arch}:{sam_ckpt}"


def write_real_size_biomedclip(folder: Path, vocabulary: list[str] = ()) -> Path:
    """A local-dir folder in BiomedCLIP's hub layout, real architecture, random weights, small vocabulary."""
    return write_biomedclip_folder(
        folder,
        vocabulary,
        embed_dim=BIOMEDCLIP_EMBED_DIM,
        vision_cfg=BIOMEDCLIP_VISION_CFG,
        bert=BERT_BASE,
        context_length=BIOMEDCLIP_CONTEXT_LENGTH,
    )


def write_random_sam(checkpoint: Path, arch: str = "vit_b") -> Path:
    """segment_anything's `arch` (vit_b 94M parameters, vit_l 312M, vit_h 641M) with its own random
    initialisation, saved as a plain state dict."""
    from segment_anything import sam_model_registry

    if arch not in ("vit_b", "vit_l", "vit_h"):
        raise ValueError(f"SAM arch must be vit_b, vit_l or vit_h, got {arch!r}")
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sam_model_registry[arch](checkpoint=None).state_dict(), checkpoint)
    return checkpoint
