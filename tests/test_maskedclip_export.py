"""MaskedCLIP's exports load with the real loaders: the open_clip folder through `localize`'s loader (the same
embeddings as the trained module) and open_clip's own tokenizer; the image encoder strictly into timm."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import torch.nn.functional as F

from localize.clip_loader import load_biomedclip
from pretrain.cli import main
from pretrain.maskedclip.tokenizer import ReportTokenizer
from tests.maskedclip_fixtures import tiny_model_args

TEXTS = ["left frontal lesion zyx", "no acute finding", "  upper   right\tmass, 12 mm  "]


def write_checkpoint(tmp_path, **overrides):
    """A Lightning-format checkpoint of a freshly built module (what `fit` saves: state_dict + hparams)."""
    from pretrain.maskedclip.module import MaskedClipPretraining

    torch.manual_seed(0)
    module = MaskedClipPretraining(**tiny_model_args(**overrides))
    with torch.no_grad():  # move the logit scale off its initial value, so the export must carry it
        module.model.logit_scale.add_(0.5)
    path = tmp_path / "last.ckpt"
    torch.save(
        {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "epoch": 3, "global_step": 7},
        path,
    )
    return path, module


@pytest.mark.parametrize("vit", ["test_vit", "test_vit2"])  # class-token pooling; average pooling + fc_norm
def test_open_clip_export_loads_through_the_localize_loader_with_the_trained_embeddings(tmp_path, capsys, vit):
    ckpt, module = write_checkpoint(tmp_path, vit=vit, teacher="ema")
    folder = tmp_path / "clip"
    assert main(["maskedclip", "export", str(ckpt), "--open-clip", str(folder)]) == 0
    summary = json.loads(capsys.readouterr().out)["open_clip"]
    assert summary["clip_spec"] == f"local-dir:{folder.resolve()}" and summary["global_step"] == 7
    assert {"open_clip_config.json", "open_clip_model.safetensors", "config.json", "vocab.txt"} <= {
        p.name for p in folder.iterdir()
    }

    clip, tokenizer, preprocess, _ = load_biomedclip(summary["clip_spec"])
    assert preprocess.image_size == (64, 64) and preprocess.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    model = module.model.eval()
    img = torch.randn(2, 3, 64, 64)
    module_tokens = ReportTokenizer(None, module.text_cfg.context_length)(TEXTS)
    ids = tokenizer(TEXTS)
    assert torch.equal(ids, module_tokens)  # open_clip tokenises as the data loader did in training
    with torch.no_grad():
        torch.testing.assert_close(clip.encode_image(img), model.encode_image(img)[1], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(clip.encode_text(ids), model.text(ids), rtol=1e-5, atol=1e-6)
        assert clip.logit_scale.item() == pytest.approx(model.logit_scale.item())
        # the dense patch features localize reads: the bridge's tokens through P_I
        tokens = clip.visual.trunk.forward_features(img)
        torch.testing.assert_close(tokens, model.encode_image(img)[0], rtol=1e-5, atol=1e-6)
    # an image and text embedding the localizer compares: cosine as in training
    cos = F.cosine_similarity(clip.encode_image(img[:1]), clip.encode_text(ids[:1]))
    assert cos.abs().item() <= 1.0


def test_timm_export_loads_strictly_into_the_named_vit(tmp_path, capsys):
    ckpt, module = write_checkpoint(tmp_path)
    out = tmp_path / "vit.pt"
    assert main(["maskedclip", "export", str(ckpt), "--timm", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)["timm"]
    sidecar = json.loads((tmp_path / "vit.pt.json").read_text())
    assert sidecar == summary and sidecar["backbone"] == "test_vit"
    assert sidecar["timm_kwargs"] == {"depth": 4, "num_classes": 0}  # test_vit's 6 blocks minus the bridge's 2
    vit = timm.create_model(sidecar["backbone"], pretrained=False, **sidecar["timm_kwargs"]).eval()
    vit.load_state_dict(torch.load(out, map_location="cpu", weights_only=True), strict=True)
    img = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        # the encoder's normed tokens of the whole image are timm's forward_features
        torch.testing.assert_close(vit.forward_features(img), module.model.encoder.eval()(img).features_btc)


def test_export_refuses_what_is_not_a_maskedclip_checkpoint(tmp_path):
    bad = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"backbone": "resnet18"}}, bad)
    with pytest.raises(ValueError, match="not a MaskedCLIP checkpoint"):
        main(["maskedclip", "export", str(bad), "--timm", str(tmp_path / "x.pt")])
    with pytest.raises(SystemExit):
        main(["maskedclip", "export", str(bad)])  # neither --open-clip nor --timm
