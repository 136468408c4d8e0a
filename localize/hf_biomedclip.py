"""BiomedCLIP in MedCLIP-SAMv2's Hugging Face layout -> the open_clip BiomedCLIP model, converted at load time.

MedCLIP-SAMv2 distributes its fine-tuned BiomedCLIP (the one the MWM release runs, `--finetuned`) as
`saliency_maps/model/`: `config.json` (a `BiomedCLIPConfig`, model_type "clip": BERT `text_config`, ViT
`vision_config`, `text_projection_config`, `projection_dim`) + `pytorch_model.bin`, with the modeling code
`modeling_biomed_clip.py` (trust_remote_code). Its `convert.py` made those weights from open_clip's by renaming;
this module inverts that renaming (no remote code runs) and stages a `local-dir:` folder that the ordinary loader
(`localize.clip_loader`) loads: ``hf-biomedclip:/path/to/model``. The folder must also hold the tokenizer files
(vocab.txt or tokenizer.json + tokenizer_config.json), as MWM's `generate_saliency_maps.py --finetuned` reads them
from there.

Layout differences handled: q/k/v projections concatenated into timm's `qkv`; the class token and position
embedding get their batch axes back; BERT's post-norm layer names. The HF model's LayerNorms use eps 1e-12 where
timm's ViT uses 1e-6 (its modeling file notes the ~1e-5 difference); BERT's are 1e-12 in both.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

# timm models whose architecture an HF vision_config can name: (width, depth, heads, patch, image, mlp width).
TIMM_VITS = {
    (768, 12, 12, 16, 224, 3072): "vit_base_patch16_224",  # BiomedCLIP
    (64, 6, 2, 16, 160, 192): "test_vit",  # timm's toy ViT (tests)
}
HF_WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
IGNORED_BUFFERS = re.compile(r".*\.(position_ids|token_type_ids)$")
# HF name -> open_clip name, for everything but q/k/v (concatenated) and the two embeddings (reshaped).
_RENAMES = [
    (r"vision_model\.embeddings\.patch_embedding\.(\w+)", "visual.trunk.patch_embed.proj.{0}"),
    (r"vision_model\.encoder\.layers\.(\d+)\.layer_norm1\.(\w+)", "visual.trunk.blocks.{0}.norm1.{1}"),
    (r"vision_model\.encoder\.layers\.(\d+)\.layer_norm2\.(\w+)", "visual.trunk.blocks.{0}.norm2.{1}"),
    (r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.out_proj\.(\w+)", "visual.trunk.blocks.{0}.attn.proj.{1}"),
    (r"vision_model\.encoder\.layers\.(\d+)\.mlp\.(fc1|fc2)\.(\w+)", "visual.trunk.blocks.{0}.mlp.{1}.{2}"),
    (r"vision_model\.post_layernorm\.(\w+)", "visual.trunk.norm.{0}"),
    (r"visual_projection\.(\w+)", "visual.head.proj.{0}"),
    (r"text_model\.embeddings\.token_embedding\.(\w+)", "text.transformer.embeddings.word_embeddings.{0}"),
    (r"text_model\.embeddings\.position_embedding\.(\w+)", "text.transformer.embeddings.position_embeddings.{0}"),
    (r"text_model\.embeddings\.token_type_embedding\.(\w+)", "text.transformer.embeddings.token_type_embeddings.{0}"),
    (r"text_model\.embeddings\.layer_norm\.(\w+)", "text.transformer.embeddings.LayerNorm.{0}"),
    (r"text_model\.encoder\.layers\.(\d+)\.self_attn\.q_proj\.(\w+)", "{T}.{0}.attention.self.query.{1}"),
    (r"text_model\.encoder\.layers\.(\d+)\.self_attn\.k_proj\.(\w+)", "{T}.{0}.attention.self.key.{1}"),
    (r"text_model\.encoder\.layers\.(\d+)\.self_attn\.v_proj\.(\w+)", "{T}.{0}.attention.self.value.{1}"),
    (r"text_model\.encoder\.layers\.(\d+)\.self_attn\.out_proj\.(\w+)", "{T}.{0}.attention.output.dense.{1}"),
    (r"text_model\.encoder\.layers\.(\d+)\.layer_norm1\.(\w+)", "{T}.{0}.attention.output.LayerNorm.{1}"),
    (r"text_model\.encoder\.layers\.(\d+)\.mlp\.fc1\.(\w+)", "{T}.{0}.intermediate.dense.{1}"),
    (r"text_model\.encoder\.layers\.(\d+)\.mlp\.fc2\.(\w+)", "{T}.{0}.output.dense.{1}"),
    (r"text_model\.encoder\.layers\.(\d+)\.layer_norm2\.(\w+)", "{T}.{0}.output.LayerNorm.{1}"),
    (r"text_projection\.fc1\.(\w+)", "text.proj.0.{0}"),
    (r"text_projection\.fc2\.(\w+)", "text.proj.2.{0}"),
]
_QKV = re.compile(r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(\w+)")


class HFBiomedCLIPError(RuntimeError):
    """The Hugging Face BiomedCLIP folder cannot be converted; the message names the file and the reason."""


def open_clip_state_dict(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename (and reshape) a MedCLIP-SAMv2 HF-layout BiomedCLIP state dict into open_clip's BiomedCLIP names."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unknown = []
    for key, value in hf_state.items():
        if IGNORED_BUFFERS.match(key):
            continue
        if key == "vision_model.embeddings.class_embedding":
            out["visual.trunk.cls_token"] = value.reshape(1, 1, -1)
        elif key == "vision_model.embeddings.position_embedding.weight":
            out["visual.trunk.pos_embed"] = value[None]
        elif match := _QKV.fullmatch(key):
            layer, which, param = match.groups()
            qkv.setdefault((layer, param), {})[which] = value
        elif key == "logit_scale" or key.startswith(("visual.", "text.")):
            out[key] = value  # convert.py passed keys it did not rename through unchanged
        else:
            for pattern, target in _RENAMES:
                if match := re.fullmatch(pattern, key):
                    out[target.format(*match.groups(), T="text.transformer.encoder.layer")] = value
                    break
            else:
                unknown.append(key)
    if unknown:
        raise HFBiomedCLIPError(f"unknown weights in the HF BiomedCLIP state dict: {sorted(unknown)[:5]}")
    for (layer, param), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise HFBiomedCLIPError(f"vision layer {layer}: q/k/v {param} incomplete ({sorted(parts)})")
        out[f"visual.trunk.blocks.{layer}.attn.qkv.{param}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def open_clip_config(hf_config: dict[str, Any], text_folder: Path) -> dict[str, Any]:
    """open_clip's BiomedCLIP config (timm ViT, pool '', linear head; HF BERT, CLS pooler, MLP head) for an HF
    BiomedCLIPConfig; the text tower and tokenizer are read from `text_folder` (BERT config.json + tokenizer)."""
    vision, text = hf_config["vision_config"], hf_config["text_config"]
    embed_dim = int(hf_config.get("projection_dim", 512))
    arch = tuple(
        int(vision[k]) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size", "image_size")
    ) + (int(vision["intermediate_size"]),)
    if arch not in TIMM_VITS:
        raise HFBiomedCLIPError(
            f"vision_config {dict(zip(('width', 'depth', 'heads', 'patch', 'image', 'mlp'), arch, strict=True))} "
            f"matches no known timm ViT ({sorted(TIMM_VITS.values())})"
        )
    projection = hf_config.get("text_projection_config") or {}
    hidden = (int(text["hidden_size"]) + embed_dim) // 2  # open_clip's MLP head width
    if projection and int(projection.get("intermediate_size", hidden)) != hidden:
        raise HFBiomedCLIPError(
            f"text_projection_config.intermediate_size {projection['intermediate_size']} != {hidden}, "
            "the width of open_clip's MLP text head"
        )
    return {
        "model_cfg": {
            "embed_dim": embed_dim,
            "vision_cfg": {
                "timm_model_name": TIMM_VITS[arch],
                "timm_model_pretrained": False,
                "timm_pool": "",
                "timm_proj": "linear",
                "image_size": arch[4],
            },
            "text_cfg": {
                "hf_model_name": str(text_folder),
                "hf_tokenizer_name": str(text_folder),
                "hf_proj_type": "mlp",
                "hf_pooler_type": "cls_last_hidden_state_pooler",
                "context_length": min(256, int(text.get("max_position_embeddings", 512))),  # BiomedCLIP's 256
            },
        },
        # BiomedCLIP's (OpenAI's) mean/std, as in its open_clip_config.json
        "preprocess_cfg": {
            "mean": [0.48145466, 0.4578275, 0.40821073],
            "std": [0.26862954, 0.26130258, 0.27577711],
        },
    }


def hf_weights_file(folder: Path) -> Path:
    weights = next((folder / n for n in HF_WEIGHT_NAMES if (folder / n).is_file()), None)
    if weights is None:
        raise HFBiomedCLIPError(f"no weights in {folder}: expected one of {', '.join(HF_WEIGHT_NAMES)}")
    return weights


def stage_open_clip_folder(folder: Path, stage: Path) -> Path:
    """Write a `local-dir:` folder for open_clip into `stage` from the HF folder; returns `stage`."""
    from safetensors.torch import load_file, save_file
    from transformers import BertConfig

    config_path = folder / "config.json"
    try:
        hf_config = json.loads(config_path.read_text(encoding="utf-8"))
        hf_config["vision_config"], hf_config["text_config"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise HFBiomedCLIPError(
            f"{config_path}: not a BiomedCLIP config with vision_config and text_config ({e})"
        ) from e
    if not any((folder / n).is_file() for n in ("vocab.txt", "tokenizer.json")):
        raise HFBiomedCLIPError(
            f"no tokenizer files in {folder}: copy vocab.txt (or tokenizer.json), tokenizer_config.json and "
            "special_tokens_map.json of microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 into it"
        )
    weights = hf_weights_file(folder)
    try:
        if weights.suffix == ".safetensors":
            hf_state = load_file(weights)
        else:
            hf_state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and safetensors errors come in many types
        raise HFBiomedCLIPError(f"cannot read {weights}: {type(e).__name__}: {e}") from e
    # The text tower's own folder: a BERT config.json beside the tokenizer files (the HF folder's config.json is
    # the CLIP one, from which AutoTokenizer would pick the wrong class).
    text_folder = stage / "bert"
    text_fields = {k: v for k, v in hf_config["text_config"].items() if k != "model_type"}
    BertConfig(**text_fields).save_pretrained(text_folder)
    for name in TOKENIZER_FILES:
        if (folder / name).is_file():
            for target in (stage, text_folder):
                (target / name).symlink_to((folder / name).resolve())
    config = open_clip_config(hf_config, text_folder)
    (stage / "open_clip_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    state = {k: v.contiguous() for k, v in open_clip_state_dict(hf_state).items()}
    save_file(state, stage / "open_clip_model.safetensors")
    return stage
