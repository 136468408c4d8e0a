"""`finetune zeroshot` on a tiny open_clip folder (BiomedCLIP's layout, real open_clip loader) whose image tower the
test sets so that the answer is known by hand.

The rigged tower: blocks that add nothing (attention and MLP outputs zero), no position embedding, a patch
embedding giving every patch the token (a, -a, b, -b, 0, ...) with a = the mean normalised red value of the patch
and b a constant, then timm's average pooling and LayerNorm (mean 0 already, so it only rescales), then the
projection columns t_A / 2, -t_A / 2, t_B / 2, -t_B / 2: the image embedding points along a·t_A + b·t_B, where
t_A, t_B are the two classes' text embeddings (the text projection's last layer is set so that they are the first
two axes: orthogonal unit vectors). So an image is called A exactly when a > b, i.e. when its red
value exceeds the one that b stands for (0.7 here), and (for a + b > 0) P(A) grows with the red value.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from data.clip_folder import OPENAI_MEAN, OPENAI_STD, load_open_clip, write_biomedclip_folder
from finetune.__main__ import main as finetune_main
from finetune.zeroshot import ZeroShotPrompts, class_embeddings

BERT = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
VISION = {"timm_model_name": "test_vit2", "timm_pool": "", "timm_proj": "linear", "image_size": 32}
THRESHOLD = 0.7  # red value where a = b
# (red value, true label): "bright" is class A (sorted class names: bright, dark)
IMAGES = [(0.30, "dark"), (0.40, "dark"), (0.50, "bright"), (0.60, "dark"), (0.65, "dark")]
IMAGES += [(0.75, "bright"), (0.80, "dark"), (0.90, "bright"), (1.00, "bright")]
# predicted bright iff red > 0.7: wrong for 0.50 (bright) and 0.80 (dark) -> accuracy 7 / 9.
# AUROC of "bright" (P(bright) ranks like red): positives 0.5, 0.75, 0.9, 1.0 outrank 2, 4, 5, 5 of the 5
# negatives -> 16 / 20; "dark" has P = 1 - P(bright), the same AUROC; macro 0.8.
ACCURACY, AUROC = 7 / 9, 0.8
PROMPTS = {"templates": ["{}"], "classes": {"bright": ["a bright image"], "dark": ["a dark image"]}}


@pytest.fixture(scope="module")
def rigged(tmp_path_factory) -> Path:
    return write_rigged_clip(tmp_path_factory.mktemp("clip") / "rigged")


def write_rigged_clip(folder: Path) -> Path:
    """A local-dir folder whose image tower is rigged as the module docstring says."""
    words = ["a", "bright", "dark", "image", "lesion"]
    # a fixed draw of the tiny towers: the least-squares fit below is exact only up to their conditioning
    with torch.random.fork_rng():
        torch.manual_seed(0)
        write_biomedclip_folder(folder, words, embed_dim=8, vision_cfg=VISION, bert=BERT, context_length=16)
    clip = load_open_clip(f"local-dir:{folder}")
    model, tokenizer = clip.model, clip.tokenizer
    with torch.no_grad():
        # text: the last projection layer maps the two class prompts onto the first two axes
        last = model.text.proj[-1]
        seen = []
        hook = last.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
        model.encode_text(tokenizer(["a bright image", "a dark image"]))
        hook.remove()
        hidden_dk = seen[0].T  # (hidden width, 2)
        axes_ek = torch.eye(last.out_features)[:, :2]
        # solved in float64: in float32 an ill-conditioned draw left 1.2e-4 off the axes
        last.weight.copy_((axes_ek.double() @ torch.linalg.pinv(hidden_dk.double())).float())
        t_a, t_b = F.normalize(model.encode_text(tokenizer(["a bright image", "a dark image"])), dim=-1)
        assert torch.allclose(t_a, axes_ek[:, 0], atol=1e-3) and torch.allclose(t_b, axes_ek[:, 1], atol=1e-3)
        # image: as the module docstring says
        trunk = model.visual.trunk
        trunk.pos_embed.zero_()
        trunk.reg_token.zero_()
        for block in trunk.blocks:
            for linear in (block.attn.proj, block.mlp.fc2):
                linear.weight.zero_()
                linear.bias.zero_()
        conv = trunk.patch_embed.proj
        conv.weight.zero_()
        conv.bias.zero_()
        pixels = conv.weight.shape[-1] * conv.weight.shape[-2]
        conv.weight[0, 0] = 1.0 / pixels  # a: the patch's mean normalised red value
        conv.weight[1, 0] = -1.0 / pixels
        b = (THRESHOLD - OPENAI_MEAN[0]) / OPENAI_STD[0]
        conv.bias[2], conv.bias[3] = b, -b
        proj = model.visual.head.proj.weight  # (embed_dim, width)
        proj.zero_()
        proj[:, 0], proj[:, 1], proj[:, 2], proj[:, 3] = t_a / 2, -t_a / 2, t_b / 2, -t_b / 2
    from data.clip_folder import write_clip_weights

    write_clip_weights(folder, model.state_dict())
    return folder


@pytest.fixture(scope="module")
def labelled_set(tmp_path_factory) -> tuple[Path, Path]:
    """Constant-colour RGB PNGs (red = the value above) with labels.csv (all in the test split) and the prompts."""
    root = tmp_path_factory.mktemp("set")
    rows = ["path,frame,label,split"]
    for i, (red, label) in enumerate(IMAGES):
        image_bgr = np.zeros((40, 40, 3), np.uint8)
        image_bgr[..., 2] = round(red * 255)
        image_bgr[..., 1] = 90  # green and blue play no part
        cv2.imwrite(str(root / f"img_{i}.png"), image_bgr)
        rows.append(f"img_{i}.png,0,{label},test")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    prompts = root / "prompts.yaml"
    prompts.write_text(yaml.safe_dump(PROMPTS))
    return root, prompts


def test_zeroshot_scores_match_the_hand_computation(rigged, labelled_set, tmp_path):
    root, prompts = labelled_set
    args = ["zeroshot", "--clip", f"local-dir:{rigged}", "--prompts", str(prompts), "--root", str(root)]
    assert finetune_main([*args, "--results-dir", str(tmp_path), "--batch-size", "4"]) == 0
    (results,) = tmp_path.glob("zeroshot-rigged-pretrained-*.json")
    out = json.loads(results.read_text())
    assert out["task"] == "zeroshot" and out["n_test"] == len(IMAGES) and out["n_train"] == 0
    assert out["metrics"]["accuracy"] == pytest.approx(ACCURACY)
    assert out["metrics"]["auroc"] == pytest.approx(AUROC)
    # rows: true class (bright, dark), columns: predicted; the two mistakes are one of each
    assert out["details"]["confusion_matrix"] == [[3, 1], [1, 4]]
    assert out["details"]["class_names"] == ["bright", "dark"] and out["init_source"] == f"local-dir:{rigged}"


def test_class_embedding_is_the_normalised_mean_of_normalised_prompts(rigged):
    clip = load_open_clip(f"local-dir:{rigged}")
    prompts = ZeroShotPrompts(("{}.", "an image: {}"), {"bright": ("bright", "a bright lesion"), "dark": ("dark",)})
    got_kd = class_embeddings(clip.model, clip.tokenizer, prompts, ["dark", "bright"])
    with torch.no_grad():
        texts = ["bright.", "an image: bright", "a bright lesion.", "an image: a bright lesion"]
        each_td = F.normalize(clip.model.encode_text(clip.tokenizer(texts)), dim=-1)
        bright_d = each_td.sum(0) / each_td.sum(0).norm()
        dark_td = F.normalize(clip.model.encode_text(clip.tokenizer(["dark.", "an image: dark"])), dim=-1)
    assert torch.allclose(got_kd[1], bright_d, atol=1e-6)  # the order asked for, not the YAML's
    assert torch.allclose(got_kd[0], F.normalize(dark_td.mean(0), dim=0), atol=1e-6)
    assert torch.allclose(got_kd.norm(dim=1), torch.ones(2), atol=1e-6)


def test_bad_prompts_and_missing_classes_are_named(rigged, labelled_set, tmp_path):
    root, _ = labelled_set
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"templates": ["no slot"], "classes": {"bright": ["x"]}}))
    with pytest.raises(ValueError, match="exactly one"):
        ZeroShotPrompts.read(bad)
    partial = tmp_path / "partial.yaml"
    partial.write_text(yaml.safe_dump({"classes": {"bright": ["a bright image"]}}))
    args = ["zeroshot", "--clip", f"local-dir:{rigged}", "--prompts", str(partial), "--root", str(root)]
    with pytest.raises(SystemExit) as exit_info:
        finetune_main([*args, "--results-dir", str(tmp_path)])
    assert exit_info.value.code == 2


def test_the_sample_prompts_cover_the_sample_labels():
    from data.sample import MODALITIES

    prompts = ZeroShotPrompts.read(Path(__file__).resolve().parents[1] / "configs/zeroshot/sample.yaml")
    labels = {name for spec in MODALITIES for name in (spec.positive, spec.negative)}
    assert set(prompts.classes) == labels and len(prompts.texts("tumor")) == 9
