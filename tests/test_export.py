"""Backbone export: timm names, only the head missing, from a real Lightning checkpoint, checked loading."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import timm
import torch

from pretrain.export import export_backbone, load_backbone
from pretrain.masking import sample_random_mask
from pretrain.spark import SparkMIM

HEADS = {
    "resnet18": {"fc.weight", "fc.bias"},
    "convnext_tiny": {"head.norm.weight", "head.norm.bias", "head.fc.weight", "head.fc.bias"},
}


@pytest.mark.parametrize("backbone", sorted(HEADS))
def test_encoder_state_dict_loads_into_plain_timm_model(backbone):
    mim = SparkMIM(backbone, input_size=64, decoder_width=32)
    sd = mim.encoder_state_dict()
    model = timm.create_model(backbone)
    result = model.load_state_dict(sd, strict=False)
    assert result.unexpected_keys == []
    assert set(result.missing_keys) == HEADS[backbone]
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())
    # the exported tensors are copies: training further does not change an export already taken
    first = next(iter(sd))
    with torch.no_grad():
        mim.encoder.model.state_dict()[first].add_(1.0)
    assert not torch.equal(mim.encoder.model.state_dict()[first], sd[first])


class TinyPretraining(pl.LightningModule):
    """The shape of the project's LightningModule that export relies on: SparkMIM at `model`, `backbone` saved."""

    def __init__(self, backbone: str = "resnet18") -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = SparkMIM(backbone, input_size=64, decoder_width=32)

    def training_step(self, batch, batch_idx):
        img = batch[0]
        active = sample_random_mask(img.shape[0], self.model.grid_hw(img.shape[-2:]), 0.6, device=img.device)
        return self.model(img, active)["loss"]

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def test_export_from_a_lightning_checkpoint(tmp_path):
    module = TinyPretraining("resnet18")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.rand(4, 3, 64, 64)), batch_size=2)
    trainer = pl.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, loader)
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)

    summary = export_backbone(ckpt, tmp_path / "out" / "backbone.pt")
    assert summary["backbone"] == "resnet18" and summary["global_step"] == 2
    assert summary["missing_in_timm_model"] == ["fc.bias", "fc.weight"]
    assert summary["n_parameters"] == sum(p.numel() for p in module.model.encoder.parameters())
    sd = torch.load(tmp_path / "out" / "backbone.pt", weights_only=True)
    expected = module.model.encoder_state_dict()
    assert sd.keys() == expected.keys() and all(torch.equal(sd[k], expected[k]) for k in sd)
    assert json.loads((tmp_path / "out" / "backbone.pt.json").read_text())["backbone"] == "resnet18"

    model = load_backbone(tmp_path / "out" / "backbone.pt")  # num_classes=0: every key, nothing missing
    assert torch.equal(model.conv1.weight, expected["conv1.weight"])
    strict = timm.create_model("resnet18", num_classes=0)
    strict.load_state_dict(sd)  # strict load works for a ResNet without classifier
    classifier = load_backbone(tmp_path / "out" / "backbone.pt", num_classes=3)
    assert classifier.fc.out_features == 3


def test_export_reads_nested_backbone_and_reports_problems(tmp_path):
    mim = SparkMIM("resnet18", input_size=64, decoder_width=32)
    state = {"model." + k: v for k, v in mim.state_dict().items()}
    nested = tmp_path / "nested.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {"model": {"backbone": "resnet18"}}}, nested)
    assert export_backbone(nested, tmp_path / "a.pt")["backbone"] == "resnet18"

    no_name = tmp_path / "no_name.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {"lr": 1e-3}}, no_name)
    with pytest.raises(ValueError, match="no_name.ckpt: cannot tell the backbone"):
        export_backbone(no_name, tmp_path / "b.pt")

    wrong_prefix = tmp_path / "wrong_prefix.ckpt"
    torch.save({"state_dict": mim.state_dict(), "hyper_parameters": {"backbone": "resnet18"}}, wrong_prefix)
    with pytest.raises(ValueError, match="wrong_prefix.ckpt: no weights under 'model.encoder.model.'"):
        export_backbone(wrong_prefix, tmp_path / "c.pt")

    wrong_backbone = tmp_path / "wrong_backbone.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {"backbone": "resnet50"}}, wrong_backbone)
    with pytest.raises(ValueError, match="do not fit timm 'resnet50'"):
        export_backbone(wrong_backbone, tmp_path / "d.pt")

    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        export_backbone(tmp_path / "missing.ckpt", tmp_path / "e.pt")
    assert not (tmp_path / "b.pt").exists() and not (tmp_path / "d.pt").exists()


def test_the_export_records_the_code_versions_and_is_also_written_as_safetensors(tmp_path):
    from safetensors import safe_open

    from data.provenance import code_version
    from pretrain.export import read_backbone

    mim = SparkMIM("resnet18", input_size=64, decoder_width=32)
    state = {"model." + k: v for k, v in mim.state_dict().items()}
    ckpt = tmp_path / "x.ckpt"
    torch.save(
        {"state_dict": state, "hyper_parameters": {"backbone": "resnet18"}, "code_version": "0.0.9+git.abc"}, ckpt
    )
    summary = export_backbone(ckpt, tmp_path / "backbone.pt")
    assert summary["code_version"] == code_version() and summary["checkpoint_code_version"] == "0.0.9+git.abc"
    weights, meta = read_backbone(tmp_path / "backbone.pt")
    safe, safe_meta = read_backbone(tmp_path / "backbone.safetensors")
    expected = mim.encoder_state_dict()
    assert weights.keys() == safe.keys() == expected.keys()
    assert all(torch.equal(safe[k], expected[k]) and torch.equal(weights[k], expected[k]) for k in expected)
    assert meta["code_version"] == safe_meta["code_version"] == code_version() and safe_meta["backbone"] == "resnet18"
    with safe_open(str(tmp_path / "backbone.safetensors"), "pt") as f:
        assert f.metadata()["code_version"] == code_version() and f.metadata()["backbone"] == "resnet18"
    model = load_backbone(tmp_path / "backbone.safetensors")  # the safetensors copy loads like the .pt
    assert torch.equal(model.conv1.weight, expected["conv1.weight"])
