"""A ConvNeXt pretrained through the real command line, exported, then loaded strictly by every fine-tuning task.

The export drops the whole head (`head.norm` and `head.fc` for ConvNeXts: pretraining prunes the final norm);
`finetune` must take the same definition of the head from `pretrain.export`, or its strict load fails.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from finetune.backbone import BackboneInitError, create_backbone
from finetune.classify import ClassificationModule
from finetune.maskrcnn import build_mask_rcnn
from finetune.unet import UNet
from pretrain.cli import main
from pretrain.export import head_prefixes, read_backbone
from tests.pretrain_lightning_fixtures import write_roi_corpus

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "tiny_cpu.yaml"
BACKBONE = "convnext_atto"  # the smallest timm ConvNeXt: same head layout (head.norm + head.fc) as ConvNeXt-S


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    root = tmp_path_factory.mktemp("convnext_run")
    corpus, cache = write_roi_corpus(root / "data", n=10)
    argv = ["fit", "--config", str(CONFIG), "--model.backbone", BACKBONE, "--data.corpus", str(corpus)]
    argv += ["--data.cache", str(cache), "--data.batch_size", "4", "--data.num_workers", "0"]
    argv += ["--data.val_fraction", "0", "--trainer.max_steps", "2", "--trainer.default_root_dir", str(root)]
    argv += ["--trainer.enable_progress_bar", "false", "--panel.every_n_steps", "100"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0
    ckpt = root / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    out = root / "backbone.pt"
    assert main(["export", str(ckpt), "--out", str(out)]) == 0
    trained = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    prefix = "model.encoder.model."
    return out, {k[len(prefix) :]: v for k, v in trained.items() if k.startswith(prefix)}


def test_the_export_has_no_head_and_its_sidecar_names_the_backbone(exported):
    out, trained = exported
    weights, meta = read_backbone(out)
    assert meta["backbone"] == BACKBONE and meta["global_step"] == 2
    assert json.loads(out.with_name(out.name + ".json").read_text())["backbone"] == BACKBONE
    assert head_prefixes(BACKBONE) == ("head.fc", "head.norm")
    assert not any(k.startswith("head.") for k in weights) and weights.keys() == trained.keys()
    assert sorted(meta["missing_in_timm_model"]) == [
        "head.fc.bias",
        "head.fc.weight",
        "head.norm.bias",
        "head.norm.weight",
    ]


def test_classification_loads_the_export_strictly(exported):
    out, trained = exported
    module = ClassificationModule(BACKBONE, init=str(out), num_classes=3)
    report = module.load_report
    assert not report.missing and not report.unexpected and len(report.loaded) == len(trained)
    assert report.head == ["head.fc.bias", "head.fc.weight", "head.norm.bias", "head.norm.weight"]
    key = "stages.2.blocks.1.conv_dw.weight"
    assert torch.equal(module.model.state_dict()[key], trained[key])
    assert module.model.head.fc.out_features == 3


def test_detection_and_segmentation_load_the_export_strictly(exported):
    out, trained = exported
    model, report = build_mask_rcnn(BACKBONE, str(out), num_classes=2, min_size=64, max_size=64)
    assert not report.missing and not report.unexpected
    body = model.backbone.body.state_dict()
    assert torch.equal(body["stages_2.blocks.1.conv_dw.weight"], trained["stages.2.blocks.1.conv_dw.weight"])
    unet = UNet(BACKBONE, str(out), num_classes=2)
    assert not unet.load_report.missing and not unet.load_report.unexpected
    encoder = unet.encoder.state_dict()
    assert torch.equal(encoder["stem_0.weight"], trained["stem.0.weight"])


def test_an_export_of_another_architecture_is_refused_by_its_sidecar(exported):
    out, _ = exported
    with pytest.raises(BackboneInitError, match=f"backbone.pt: exported from a '{BACKBONE}'.*not 'convnext_femto'"):
        create_backbone("convnext_femto", str(out))
