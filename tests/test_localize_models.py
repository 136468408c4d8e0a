"""Loading BiomedCLIP / SAM checkpoints (tiny stand-ins on disk, loaded like real ones) and their clear errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from safetensors.torch import load_file, save_file

from localize.models import (
    BIOMEDCLIP_HUB_SPEC,
    ClipLoadError,
    SamLoadError,
    file_sha256,
    load_biomedclip,
    load_sam,
    parse_sam_spec,
    standins_main,
)
from localize.prompts import PromptConfig

pytest_plugins = ["tests.localize_fixtures"]  # fixtures: standins, clip, clip_dir, sam

REPO = Path(__file__).resolve().parents[1]
HUB_BERT = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"


def copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def set_text_model_name(folder: Path, name: str) -> None:
    config_path = folder / "open_clip_config.json"
    config = json.loads(config_path.read_text())
    config["model_cfg"]["text_cfg"]["hf_model_name"] = name
    config["model_cfg"]["text_cfg"]["hf_tokenizer_name"] = name
    config_path.write_text(json.dumps(config))


def test_standin_config_is_complete_and_labelled_untrained(standins):
    assert standins["untrained"] is True
    assert standins["clip"].startswith("local-dir:") and Path(standins["clip"][10:]).is_absolute()
    assert standins["sam"]["arch"] == "custom" and Path(standins["sam"]["checkpoint"]).is_file()
    assert standins["saliency"]["method"] == "m2ib" and standins["refine"]["threshold"] == 0.3
    assert PromptConfig.load(standins["prompts"]).for_modality("MR").prompts[0] == "brain tumor"


def test_clip_weights_really_loaded_from_the_folder(clip, clip_dir):
    model, tokenizer, preprocess, source = clip
    saved = load_file(clip_dir / "open_clip_model.safetensors")
    state = model.state_dict()
    for key in (
        "visual.trunk.blocks.0.attn.qkv.weight",
        "visual.head.proj.weight",
        "text.transformer.embeddings.word_embeddings.weight",
        "text.proj.0.weight",
    ):
        assert torch.equal(state[key], saved[key]), key
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert preprocess.image_size == (160, 160) and preprocess.mean[0] == pytest.approx(0.48145466)
    assert source == {
        "spec": f"local-dir:{clip_dir}",
        "weights": "open_clip_model.safetensors",
        "sha256": file_sha256(clip_dir / "open_clip_model.safetensors"),
    }
    tokens = tokenizer(["brain tumor", "left and right lungs"])
    assert tokens.shape == (2, 32) and (tokens[:, 1:3] > 4).all()  # real word ids, not [UNK]=1


def test_preprocess_resizes_any_image_to_the_model_input(clip):
    _, _, preprocess, _ = clip
    grey, rgb = np.full((30, 50), 0.5, np.float32), np.zeros((70, 20, 3), np.float32)
    batch = preprocess([grey, rgb])
    assert batch.shape == (2, 3, 160, 160)
    expected = (0.5 - torch.tensor(preprocess.mean)) / torch.tensor(preprocess.std)
    assert torch.allclose(batch[0, :, 80, 80], expected, atol=1e-5)
    assert torch.allclose(batch[1, :, 5, 5], -torch.tensor(preprocess.mean) / torch.tensor(preprocess.std), atol=1e-5)


def test_folder_pointing_at_hub_bert_loads_offline_and_is_left_untouched(clip, clip_dir, tmp_path):
    folder = copy_folder(clip_dir, tmp_path / "user_biomedclip")
    set_text_model_name(folder, HUB_BERT)  # what the hub's open_clip_config.json says
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    script = (
        "import sys, torch; from localize.models import load_biomedclip\n"
        f"m, tok, _, _ = load_biomedclip('local-dir:{folder}')\n"
        "torch.save(m.encode_text(tok(['brain tumor'])), sys.argv[1])\n"
    )
    out = tmp_path / "text.pt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", script, str(out)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    model, tokenizer, _, _ = clip
    with torch.no_grad():
        expected = model.encode_text(tokenizer(["brain tumor"]))
    assert torch.allclose(torch.load(out, weights_only=True), expected, atol=1e-6)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_open_clip_alone_would_build_random_weights_silently(clip_dir, tmp_path, monkeypatch):
    # Why load_biomedclip checks the folder itself: open_clip only logs a warning when weights are missing.
    folder = copy_folder(clip_dir, tmp_path / "no_weights")
    (folder / "open_clip_model.safetensors").unlink()
    monkeypatch.chdir(folder)  # open_clip reads the text tower's "." (the folder itself) from the working directory
    model = open_clip.create_model(f"local-dir:{folder}", pretrained_text=False)
    saved = load_file(clip_dir / "open_clip_model.safetensors")
    assert not torch.equal(model.state_dict()["visual.head.proj.weight"], saved["visual.head.proj.weight"])


def test_missing_weights_raise_and_name_the_file(clip_dir, tmp_path):
    folder = copy_folder(clip_dir, tmp_path / "no_weights")
    (folder / "open_clip_model.safetensors").unlink()
    with pytest.raises(ClipLoadError, match="open_clip_model.safetensors") as err:
        load_biomedclip(f"local-dir:{folder}")
    assert str(folder) in str(err.value) and "untrained" in str(err.value)


@pytest.mark.parametrize(
    ("remove", "hub_name", "message"),
    [
        ("open_clip_config.json", False, "Missing open_clip_config.json"),
        ("config.json", True, "Missing config.json"),
        ("tokenizer.json+vocab.txt", False, "Missing tokenizer files"),
    ],
)
def test_incomplete_folder_errors_name_what_is_missing(clip_dir, tmp_path, remove, hub_name, message):
    folder = copy_folder(clip_dir, tmp_path / "incomplete")
    if hub_name:
        set_text_model_name(folder, HUB_BERT)
    for name in remove.split("+"):
        (folder / name).unlink()
    with pytest.raises(ClipLoadError, match=message) as err:
        load_biomedclip(f"local-dir:{folder}")
    assert str(folder) in str(err.value)


def test_weights_of_another_architecture_are_refused(clip_dir, tmp_path):
    folder = copy_folder(clip_dir, tmp_path / "wrong_weights")
    weights = load_file(folder / "open_clip_model.safetensors")
    weights.pop("visual.head.proj.weight")
    save_file(weights, folder / "open_clip_model.safetensors")
    with pytest.raises(ClipLoadError, match="visual.head.proj.weight"):
        load_biomedclip(f"local-dir:{folder}")


@pytest.mark.parametrize("keep", [0, 100, None])  # empty, cut inside the header, cut inside the tensors
def test_corrupt_weights_file_is_a_one_line_error_naming_it(clip_dir, tmp_path, keep):
    folder = copy_folder(clip_dir, tmp_path / "corrupt")
    weights = folder / "open_clip_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2 if keep is None else keep])
    with pytest.raises(ClipLoadError, match="from open_clip_model.safetensors: SafetensorError") as err:
        load_biomedclip(f"local-dir:{folder}")
    assert str(folder) in str(err.value) and "\n" not in str(err.value)


def test_hub_spec_without_network_explains_the_offline_route(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # a cold cache
    with pytest.raises(ClipLoadError, match="pass 'local-dir:/path/to/folder'"):
        load_biomedclip(BIOMEDCLIP_HUB_SPEC)


def test_bad_clip_specs(tmp_path):
    with pytest.raises(ClipLoadError, match="Unknown CLIP spec"):
        load_biomedclip("ViT-B-16")
    with pytest.raises(ClipLoadError, match="CLIP folder not found"):
        load_biomedclip(f"local-dir:{tmp_path / 'absent'}")


def test_sam_weights_really_loaded_from_spec_string_and_dict(standins, sam):
    checkpoint = Path(standins["sam"]["checkpoint"])
    saved = torch.load(checkpoint, weights_only=True)
    from_string = load_sam(f"custom:{checkpoint}")
    for model in (sam, from_string):
        state = model.state_dict()
        assert state.keys() == saved.keys()
        assert all(torch.equal(state[k], saved[k]) for k in saved)
        assert not model.training and model.image_encoder.img_size == 64


def test_sam_errors_name_the_file(standins, tmp_path):
    checkpoint = Path(standins["sam"]["checkpoint"])
    with pytest.raises(SamLoadError, match="sam_absent.pth"):
        load_sam(f"vit_b:{tmp_path / 'sam_absent.pth'}")
    lonely = Path(shutil.copy(checkpoint, tmp_path / "lonely.pth"))
    with pytest.raises(SamLoadError, match=r"lonely\.json"):
        load_sam({"arch": "custom", "checkpoint": str(lonely)})
    arch = json.loads(checkpoint.with_suffix(".json").read_text())
    arch["prompt_encoder"]["embed_dim"] = 16
    lonely.with_suffix(".json").write_text(json.dumps(arch))
    with pytest.raises(SamLoadError, match="widths must be equal"):
        load_sam({"arch": "custom", "checkpoint": str(lonely)})
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(checkpoint.read_bytes()[:1000])
    shutil.copy(checkpoint.with_suffix(".json"), truncated.with_suffix(".json"))
    with pytest.raises(SamLoadError, match="truncated.pth"):
        load_sam(f"custom:{truncated}")
    # Random bytes: torch's weights_only refusal is cut down to its cause and what to do.
    (tmp_path / "noise.pth").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(SamLoadError, match=r"noise\.pth.*not a plain tensor checkpoint") as err:
        load_sam(f"vit_b:{tmp_path / 'noise.pth'}")
    assert "\n" not in str(err.value) and "Download the file again" in str(err.value)
    # A pickled Python object is refused, not executed.
    torch.save({"model": Path("x")}, tmp_path / "pickled.pth")
    with pytest.raises(SamLoadError, match=r"not a plain tensor checkpoint \(.*pathlib"):
        load_sam(f"vit_b:{tmp_path / 'pickled.pth'}")


def test_sam_checkpoint_of_another_architecture_is_refused(standins):
    with pytest.raises(SamLoadError, match="arch 'vit_b'"):
        load_sam(f"vit_b:{standins['sam']['checkpoint']}")


def test_parse_sam_spec():
    assert parse_sam_spec("vit_h:/models/sam_vit_h.pth") == ("vit_h", Path("/models/sam_vit_h.pth"))
    assert parse_sam_spec({"arch": "vit_l", "checkpoint": "x.pth"}) == ("vit_l", Path("x.pth"))
    with pytest.raises(SamLoadError, match="ARCH:/path"):
        parse_sam_spec("/models/sam.pth")
    with pytest.raises(SamLoadError, match="Unknown SAM arch"):
        parse_sam_spec({"arch": "vit_x", "checkpoint": "x.pth"})


def test_standins_command_writes_a_loadable_config(tmp_path, capsys):
    assert standins_main(["--out", str(tmp_path / "si")]) == 0
    config_path = Path(capsys.readouterr().out.strip())
    assert config_path == tmp_path / "si" / "localize.yaml" and config_path.is_file()
    assert (tmp_path / "si" / "biomedclip" / "open_clip_model.safetensors").is_file()
