"""MedCLIP-SAMv2's Hugging Face-layout BiomedCLIP, converted to open_clip at load time.

The test writes a tiny model in that layout itself (config.json as `BiomedCLIPConfig` has it, weights under the
names of `modeling_biomed_clip.py`, tokenizer files), loads it through `hf-biomedclip:`, and checks the open_clip
model's image and text embeddings against a direct computation from the written tensors that follows
`modeling_biomed_clip.py` (pre-norm ViT without a pre-LayerNorm, CLS token -> post_layernorm -> visual_projection;
post-norm BERT, CLS of the last hidden state -> 2-layer GELU MLP without biases).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import BertTokenizerFast

from data.clip_folder import SPECIAL_TOKENS
from localize.clip_loader import ClipLoadError, file_sha256, load_biomedclip
from localize.hf_biomedclip import HFBiomedCLIPError, open_clip_state_dict
from localize.saliency import M2IBSaliency

VISION = {"hidden_size": 64, "num_hidden_layers": 6, "num_attention_heads": 2, "intermediate_size": 192}
VISION |= {"patch_size": 16, "image_size": 160, "num_channels": 3, "layer_norm_eps": 1e-12, "hidden_act": "gelu"}
TEXT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
TEXT |= {"max_position_embeddings": 64, "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu"}
EMBED = 16
WORDS = ["brain", "tumor", "left", "and", "right", "lungs"]


def hf_state(vocab: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random tensors under modeling_biomed_clip.py's parameter names."""

    def rnd(*shape, scale=0.2):
        return torch.randn(*shape, generator=gen) * scale

    def layer_norm(prefix, width):
        return {f"{prefix}.weight": 1 + rnd(width, scale=0.1), f"{prefix}.bias": rnd(width, scale=0.1)}

    def linear(prefix, n_out, n_in, bias=True):
        return {f"{prefix}.weight": rnd(n_out, n_in), **({f"{prefix}.bias": rnd(n_out)} if bias else {})}

    def encoder(prefix, cfg):
        out, width, mlp = {}, cfg["hidden_size"], cfg["intermediate_size"]
        for i in range(cfg["num_hidden_layers"]):
            p = f"{prefix}.encoder.layers.{i}"
            for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
                out |= linear(f"{p}.self_attn.{name}", width, width)
            out |= layer_norm(f"{p}.layer_norm1", width) | layer_norm(f"{p}.layer_norm2", width)
            out |= linear(f"{p}.mlp.fc1", mlp, width) | linear(f"{p}.mlp.fc2", width, mlp)
        return out

    grid = (VISION["image_size"] // VISION["patch_size"]) ** 2
    state = {
        "vision_model.embeddings.class_embedding": rnd(64),
        "vision_model.embeddings.patch_embedding.weight": rnd(64, 3, 16, 16, scale=0.02),
        "vision_model.embeddings.patch_embedding.bias": rnd(64),
        "vision_model.embeddings.position_embedding.weight": rnd(grid + 1, 64),
        "vision_model.embeddings.position_ids": torch.arange(grid + 1)[None],  # a buffer older saves carry
        **encoder("vision_model", VISION),
        **layer_norm("vision_model.post_layernorm", 64),
        "visual_projection.weight": rnd(EMBED, 64),
        "text_model.embeddings.token_embedding.weight": rnd(vocab, 32),
        "text_model.embeddings.position_embedding.weight": rnd(64, 32),
        "text_model.embeddings.token_type_embedding.weight": rnd(2, 32),
        **layer_norm("text_model.embeddings.layer_norm", 32),
        **encoder("text_model", TEXT),
        **linear("text_projection.fc1", (32 + EMBED) // 2, 32, bias=False),
        **linear("text_projection.fc2", EMBED, (32 + EMBED) // 2, bias=False),
        "logit_scale": torch.tensor(4.4454),
    }
    return state


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("medclip_samv2_model")
    vocab = [*SPECIAL_TOKENS, *WORDS]
    BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True).save_pretrained(folder)
    config = {
        "architectures": ["BiomedCLIPModel"],
        "model_type": "clip",
        "projection_dim": EMBED,
        "logit_scale_init_value": 4.4454,
        "text_config": {**TEXT, "model_type": "bert", "vocab_size": len(vocab), "pad_token_id": 0},
        "vision_config": {**VISION, "model_type": "vit", "qkv_bias": True},
        "text_projection_config": {"hidden_size": 32, "intermediate_size": (32 + EMBED) // 2, "projection_dim": EMBED},
    }
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    state = hf_state(len(vocab), torch.Generator().manual_seed(0))
    torch.save(state, folder / "pytorch_model.bin")
    return folder, state


def layer_norm(x, state, prefix):
    return F.layer_norm(x, x.shape[-1:], state[f"{prefix}.weight"], state[f"{prefix}.bias"], eps=1e-12)


def attention(x, state, prefix, heads):
    n, t, c = x.shape
    q, k, v = (F.linear(x, state[f"{prefix}.{n}_proj.weight"], state[f"{prefix}.{n}_proj.bias"]) for n in "qkv")
    q, k, v = (y.view(n, t, heads, c // heads).transpose(1, 2) for y in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(c // heads), dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(n, t, c)
    return F.linear(out, state[f"{prefix}.out_proj.weight"], state[f"{prefix}.out_proj.bias"])


def mlp(x, state, prefix):
    hidden = F.gelu(F.linear(x, state[f"{prefix}.fc1.weight"], state[f"{prefix}.fc1.bias"]))
    return F.linear(hidden, state[f"{prefix}.fc2.weight"], state[f"{prefix}.fc2.bias"])


def direct_image_embedding(state, image_13hw):
    """modeling_biomed_clip.py's vision tower: no pre-norm, pre-norm layers, CLS -> post_layernorm -> projection."""
    p = "vision_model.embeddings"
    x = F.conv2d(image_13hw, state[f"{p}.patch_embedding.weight"], state[f"{p}.patch_embedding.bias"], stride=16)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([state[f"{p}.class_embedding"].expand(1, 1, -1), x], dim=1) + state[f"{p}.position_embedding.weight"]
    for i in range(VISION["num_hidden_layers"]):
        layer = f"vision_model.encoder.layers.{i}"
        x = x + attention(layer_norm(x, state, f"{layer}.layer_norm1"), state, f"{layer}.self_attn", 2)
        x = x + mlp(layer_norm(x, state, f"{layer}.layer_norm2"), state, f"{layer}.mlp")
    return layer_norm(x[:, 0], state, "vision_model.post_layernorm") @ state["visual_projection.weight"].T


def direct_text_embedding(state, ids):
    """The BERT text tower (post-norm), CLS of the last hidden state, then the MLP projection."""
    p = "text_model.embeddings"
    x = state[f"{p}.token_embedding.weight"][ids] + state[f"{p}.position_embedding.weight"][: ids.shape[1]]
    x = layer_norm(x + state[f"{p}.token_type_embedding.weight"][0], state, f"{p}.layer_norm")
    for i in range(TEXT["num_hidden_layers"]):
        layer = f"text_model.encoder.layers.{i}"
        x = layer_norm(x + attention(x, state, f"{layer}.self_attn", 2), state, f"{layer}.layer_norm1")
        x = layer_norm(x + mlp(x, state, f"{layer}.mlp"), state, f"{layer}.layer_norm2")
    hidden = F.gelu(x[:, 0] @ state["text_projection.fc1.weight"].T)
    return hidden @ state["text_projection.fc2.weight"].T


def test_converted_model_gives_the_hf_models_embeddings(hf_folder):
    folder, state = hf_folder
    model, tokenizer, preprocess, source = load_biomedclip(f"hf-biomedclip:{folder}")
    assert source["sha256"] == file_sha256(folder / "pytorch_model.bin") and source["weights"] == "pytorch_model.bin"
    assert type(model.visual.trunk).__name__ == "VisionTransformer" and preprocess.image_size == (160, 160)

    image = torch.randn(1, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got_image = model.encode_image(image)
        expected_image = direct_image_embedding(state, image)
    # timm's LayerNorm eps is 1e-6 where the HF file's is 1e-12: a ~1e-5 difference, as modeling_biomed_clip notes
    torch.testing.assert_close(got_image, expected_image, rtol=1e-4, atol=1e-4)

    text = "Brain tumor and lungs"
    ids = torch.tensor([BertTokenizerFast.from_pretrained(folder)(text)["input_ids"]])  # unpadded, as the release
    with torch.no_grad():
        got_text = model.encode_text(tokenizer([text]))  # open_clip pads to its context and masks the padding
        expected_text = direct_text_embedding(state, ids)
    torch.testing.assert_close(got_text, expected_text, rtol=1e-4, atol=1e-5)
    assert model.logit_scale.item() == pytest.approx(4.4454)
    # and the saliency code takes it like any BiomedCLIP
    text_1d = F.normalize(got_text, dim=-1)
    saliency = M2IBSaliency(layer=3, steps=1, noise_samples=1)(model, image, text_1d)
    assert saliency.shape == (1, 1, 160, 160)


def test_renaming_is_complete_and_refuses_unknown_weights(hf_folder):
    _, state = hf_folder
    converted = open_clip_state_dict(state)
    assert converted["visual.trunk.blocks.2.attn.qkv.weight"].shape == (192, 64)
    torch.testing.assert_close(
        converted["visual.trunk.blocks.2.attn.qkv.weight"][64:128],
        state["vision_model.encoder.layers.2.self_attn.k_proj.weight"],  # q, k, v in that order, as timm's qkv
    )
    assert converted["visual.trunk.cls_token"].shape == (1, 1, 64)
    with pytest.raises(HFBiomedCLIPError, match="unknown weights.*extra"):
        open_clip_state_dict({**state, "extra.weight": torch.zeros(1)})


def test_bad_folders_name_what_is_missing(hf_folder, tmp_path):
    folder, _ = hf_folder
    for name in ("config.json", "pytorch_model.bin"):
        (tmp_path / name).symlink_to(folder / name)
    with pytest.raises(ClipLoadError, match="no tokenizer files"):
        load_biomedclip(f"hf-biomedclip:{tmp_path}")
    (tmp_path / "tokenizer.json").symlink_to(folder / "tokenizer.json")
    (tmp_path / "pytorch_model.bin").unlink()
    with pytest.raises(ClipLoadError, match="no weights"):
        load_biomedclip(f"hf-biomedclip:{tmp_path}")
