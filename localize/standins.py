"""Tiny UNTRAINED BiomedCLIP- and SAM-architecture checkpoints in the real on-disk layouts.

They let the whole localization pipeline run (tests, demo, CI) on machines without model downloads. Their outputs
are meaningless by construction: the written ``localize.yaml`` carries ``untrained: true`` and everything produced
with it must be labelled untrained. They are loaded by the same loaders a user's real checkpoints take.

Layout written under ``out_dir``::

    biomedclip/   open_clip_config.json  open_clip_model.safetensors   (timm 'test_vit' + 2-layer BERT)
                  config.json  vocab.txt  tokenizer.json  tokenizer_config.json  special_tokens_map.json
    sam_tiny.pth  sam_tiny.json                                         (custom SAM, ~78k parameters)
    localize.yaml                                                       (config for `python -m localize run`)
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml

from data.clip_folder import write_biomedclip_folder
from localize.prompts import DEFAULT_PROMPTS_PATH, PromptConfig
from localize.refine import RefineConfig
from localize.sam_loader import build_custom_sam

TINY_SAM_ARCH: dict[str, Any] = {
    "image_encoder": {
        "img_size": 64,
        "patch_size": 8,
        "embed_dim": 32,
        "depth": 2,
        "num_heads": 2,
        "mlp_ratio": 2,
        "out_chans": 32,
        "use_rel_pos": True,
        "window_size": 4,
        "global_attn_indexes": [1],
        "norm_eps": 1e-6,
    },
    "prompt_encoder": {
        "embed_dim": 32,
        "image_embedding_size": [8, 8],
        "input_image_size": [64, 64],
        "mask_in_chans": 8,
    },
    "mask_decoder": {
        "transformer_dim": 32,
        "num_multimask_outputs": 3,
        "iou_head_depth": 3,
        "iou_head_hidden_dim": 32,
        "transformer": {"depth": 2, "embedding_dim": 32, "num_heads": 2, "mlp_dim": 64},
    },
    "pixel_mean": [123.675, 116.28, 103.53],
    "pixel_std": [58.395, 57.12, 57.375],
}

# BiomedCLIP's layout (timm ViT, pool '', linear proj; HF BERT, mlp proj, CLS pooler) at toy size.
TINY_VISION_CFG = {
    "timm_model_name": "test_vit",
    "timm_model_pretrained": False,
    "timm_pool": "",
    "timm_proj": "linear",
    "image_size": 160,
}  # test_vit: 160 px, patch 16, width 64, depth 6
TINY_BERT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}
TINY_CONTEXT_LENGTH = 32


def write_standins(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the stand-in checkpoints and ``localize.yaml`` into ``out_dir``; returns the yaml's path."""
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    prompts = PromptConfig.load(DEFAULT_PROMPTS_PATH)
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream untouched
        torch.manual_seed(seed)
        clip_dir = write_tiny_biomedclip(out / "biomedclip", vocabulary=prompts.all_prompts())
        sam_ckpt = write_tiny_sam(out / "sam_tiny.pth")
    config = {
        # relative to this file's folder (config files anchor their paths there): the folder can move
        "clip": f"local-dir:{os.path.relpath(clip_dir, out)}",
        "sam": {"arch": "custom", "checkpoint": os.path.relpath(sam_ckpt, out)},
        "saliency": standin_saliency(),
        "refine": asdict(RefineConfig()),
        "precision": "fp32",
        "prompts": prompts.to_dict(),
        "untrained": True,
    }
    path = out / "localize.yaml"
    header = (
        "# Tiny UNTRAINED stand-in models: outputs are meaningless and labelled untrained.\n"
        "# saliency: the release's M2IB (preset release: raw features, N(0,1) noise, 10 noise copies per step,\n"
        "# 10 steps, beta 0.1, lr 1, the map of the last forward pass) at layer 3 of the stand-in's 6 blocks;\n"
        "# `preset: fast` is the faster variant. refine: the release's (threshold 0.3, 2 components, SAM, ratio 1).\n"
    )
    path.write_text(header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def standin_saliency() -> dict[str, Any]:
    """The release's M2IB (its preset: every parameter at the release's value) at the stand-in's depth: test_vit
    has 6 blocks, and block 3 sits where the release's block 7 of 12 does (block 7 does not exist there)."""
    return {"method": "m2ib", "preset": "release", "layer": 3}


def write_tiny_biomedclip(folder: Path, vocabulary: list[str] = ()) -> Path:
    """A BiomedCLIP-layout local-dir folder with random weights at toy size."""
    return write_biomedclip_folder(
        folder, vocabulary, embed_dim=32, vision_cfg=TINY_VISION_CFG, bert=TINY_BERT, context_length=TINY_CONTEXT_LENGTH
    )


def write_tiny_sam(checkpoint: Path) -> Path:
    """A randomly initialised tiny SAM: ``checkpoint`` (.pth state dict) + its architecture ``.json``."""
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.with_suffix(".json").write_text(json.dumps(TINY_SAM_ARCH, indent=2), encoding="utf-8")
    sam = build_custom_sam(TINY_SAM_ARCH, source="TINY_SAM_ARCH")
    torch.save(sam.state_dict(), checkpoint)
    return checkpoint


def standins_main(argv: list[str] | None = None) -> int:
    """``python -m localize stand-ins --out DIR``: write the stand-ins, print the config path."""
    parser = argparse.ArgumentParser(prog="python -m localize stand-ins", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder to write the stand-ins into")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    args = parser.parse_args(argv)
    print(write_standins(args.out, seed=args.seed))
    return 0
