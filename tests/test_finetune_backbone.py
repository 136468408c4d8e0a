"""Backbone initialisation: exported weights really load (tensors compared before and after), mismatches and
missing ImageNet weights fail clearly, and the detection / segmentation wrappers receive the same weights."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from finetune.backbone import BackboneInitError, InitSpec, create_backbone, find_imagenet_weights
from finetune.maskrcnn import TimmFpnBackbone, build_mask_rcnn
from finetune.unet import UNet


def _export(path, name="resnet18", seed=1):
    """An 'exported backbone': a timm state dict without the classifier head, with non-default values."""
    torch.manual_seed(seed)
    model = timm.create_model(name)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn_like(tensor))
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith(("fc.", "head.fc."))}
    torch.save(sd, path)
    return sd


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("backbone") / "backbone.pt"
    return path, _export(path)


def test_init_spec_parsing(tmp_path):
    assert InitSpec.parse("scratch").kind == "scratch"
    assert InitSpec.parse("imagenet") == InitSpec("imagenet")
    assert InitSpec.parse(f"imagenet:{tmp_path}/w.safetensors").path == tmp_path / "w.safetensors"
    assert InitSpec.parse(str(tmp_path / "backbone.pt")).kind == "pretrained"


def test_classifier_loads_exported_backbone(exported):
    path, sd = exported
    scratch, report0 = create_backbone("resnet18", "scratch", num_classes=3)
    assert not torch.equal(scratch.state_dict()["layer3.1.conv2.weight"], sd["layer3.1.conv2.weight"])
    assert report0.init == "scratch" and not report0.loaded

    model, report = create_backbone("resnet18", str(path), num_classes=3)
    loaded = model.state_dict()
    for key in ("conv1.weight", "layer3.1.conv2.weight", "layer4.1.bn2.running_var"):
        assert torch.equal(loaded[key], sd[key]), key
    assert model.fc.out_features == 3
    assert report.init == "pretrained" and report.source == str(path) and len(report.sha256) == 16
    assert len(report.loaded) == len(sd) and not report.missing and not report.unexpected
    assert report.head == ["fc.bias", "fc.weight"]


def test_features_only_backbone_gets_the_weights(exported, tmp_path):
    path, sd = exported
    features, report = create_backbone("resnet18", str(path), features_only=True)
    assert torch.equal(features.state_dict()["layer2.0.downsample.0.weight"], sd["layer2.0.downsample.0.weight"])
    # ConvNeXt: timm's features_only wrapper renames modules (stages.0 -> stages_0); weights must still arrive.
    cnx_path = tmp_path / "convnext.pt"
    cnx_sd = _export(cnx_path, "convnext_atto", seed=2)
    cnx, cnx_report = create_backbone("convnext_atto", str(cnx_path), features_only=True)
    assert torch.equal(cnx.state_dict()["stages_1.blocks.0.conv_dw.weight"], cnx_sd["stages.1.blocks.0.conv_dw.weight"])
    assert not cnx_report.missing


def test_mismatched_weights_fail_with_the_file_named(exported, tmp_path):
    path, sd = exported
    with pytest.raises(BackboneInitError, match="backbone.pt: weights do not match.*missing"):
        create_backbone("resnet34", str(path))  # same names, more blocks: missing keys
    with pytest.raises(BackboneInitError, match="backbone.pt: weights do not fit.*other shapes"):
        create_backbone("resnet50", str(path))  # bottleneck blocks: other shapes
    partial = tmp_path / "partial.pt"
    torch.save({k: v for k, v in sd.items() if not k.startswith("layer4")}, partial)
    with pytest.raises(BackboneInitError, match="missing"):
        create_backbone("resnet18", str(partial))
    model, report = create_backbone("resnet18", str(partial), strict=False)
    assert report.missing and all(k.startswith("layer4") for k in report.missing)
    ckpt = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": sd, "epoch": 3}, ckpt)
    with pytest.raises(BackboneInitError, match="not a plain state dict"):
        create_backbone("resnet18", str(ckpt))
    with pytest.raises(BackboneInitError, match="not found"):
        create_backbone("resnet18", str(tmp_path / "nope.pt"))


def test_imagenet_weights_only_from_disk(tmp_path, monkeypatch, exported):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # empty caches: nothing there, nothing fetched
    with pytest.raises(BackboneInitError, match="not on disk.*nothing is downloaded"):
        find_imagenet_weights("resnet18", hf_cache_dir=tmp_path / "hf")
    # A file in the Hugging Face cache layout is found without any network access.
    snapshot = tmp_path / "hf" / "models--timm--resnet18.a1_in1k" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    (snapshot / "model.safetensors").write_bytes(b"x")
    assert find_imagenet_weights("resnet18", hf_cache_dir=tmp_path / "hf") == snapshot / "model.safetensors"
    path, sd = exported
    from safetensors.torch import save_file

    weights = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, weights)
    model, report = create_backbone("resnet18", f"imagenet:{weights}", num_classes=2)
    assert report.init == "imagenet" and torch.equal(
        model.state_dict()["layer1.0.conv1.weight"], sd["layer1.0.conv1.weight"]
    )


def test_mask_rcnn_torchvision_body_loads_timm_resnet(exported):
    path, sd = exported
    model, report = build_mask_rcnn("resnet18", str(path), num_classes=3, train_sizes=(64,), test_size=64)
    body = model.backbone.body.state_dict()
    for key in ("conv1.weight", "layer1.0.bn1.running_mean", "layer4.1.conv2.weight"):
        assert torch.equal(body[key], sd[key]), key
    assert len(report.loaded) == len(sd) and not report.missing and not report.unexpected
    # SparK's detectron2 config: trainable BatchNorm in backbone, FPN and both heads, nothing frozen
    assert type(model.backbone.body.bn1) is nn.BatchNorm2d
    assert all(p.requires_grad for p in model.parameters())
    norms = {
        name.split(".")[0] + "." + name.split(".")[1] for name, m in model.named_modules() if type(m) is nn.BatchNorm2d
    }
    assert {"backbone.body", "backbone.fpn", "roi_heads.box_head", "roi_heads.mask_head"} <= norms
    convs = [m for m in model.roi_heads.box_head.modules() if isinstance(m, nn.Conv2d)]
    fcs = [m for m in model.roi_heads.box_head.modules() if isinstance(m, nn.Linear)]
    assert len(convs) == 4 and [f.out_features for f in fcs] == [1024]  # 4conv1fc

    frozen, _ = build_mask_rcnn("resnet18", str(path), num_classes=3, norm="frozen_bn", box_head="2fc")
    assert type(frozen.backbone.body.bn1).__name__ == "FrozenBatchNorm2d"  # option: pretraining statistics frozen
    assert torch.equal(frozen.backbone.body.bn1.running_mean, sd["bn1.running_mean"])
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())  # no norm in FPN and heads
    with pytest.raises(ValueError, match="frozen_bn.*scratch"):
        build_mask_rcnn("resnet18", "scratch", num_classes=3, norm="frozen_bn")


def test_timm_fpn_backbone_for_other_timm_models():
    body, _ = create_backbone("convnext_atto", "scratch", features_only=True)
    fpn = TimmFpnBackbone(body, out_channels=32)
    out = fpn(torch.rand(1, 3, 64, 64))
    assert list(out) == ["0", "1", "2", "3", "pool"]
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert all(v.shape[1] == 32 for v in out.values())


def test_unet_encoder_loads_weights_and_outputs_input_size(exported):
    path, sd = exported
    net = UNet("resnet18", str(path), num_classes=3)
    assert torch.equal(net.encoder.state_dict()["layer3.0.conv1.weight"], sd["layer3.0.conv1.weight"])
    assert net(torch.rand(2, 3, 64, 48)).shape == (2, 3, 64, 48)
