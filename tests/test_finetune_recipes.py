"""The fine-tuning recipes against their references: SparK's layer maps (classification and detectron2), MAE's
linear-probe head and lr scaling, detectron2's warm-up + multistep schedule, the presets' published constants."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from timm.optim import Lamb, Lars
from torch import nn

from data.sample import write_sample_corpus
from finetune.classify import ClassificationData, ClassificationModule
from finetune.detect import DetectionModule
from finetune.recipe import MAE_LINEAR_PROBE, SPARK_FINETUNE

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "finetune"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_sample_corpus(root, n=6, seed=0, size=48)
    return root


def _group_of(optimizer_groups: list[dict], model: nn.Module) -> dict[str, dict]:
    by_id = {id(p): g for g in optimizer_groups for p in g["params"]}
    return {name: by_id[id(p)] for name, p in model.named_parameters() if p.requires_grad}


def test_classification_layer_decay_follows_sparks_resnet50_map():
    """SparK resnets_get_layer_id_and_scale_exp for ResNet-50: stem 0, layer1 1, layer2 in pairs of blocks (2, 3),
    layer3 in threes (4, 5), layer4 6, fc 7; lr x 0.7^(7 - layer); no weight decay on 1-D parameters."""
    module = ClassificationModule("resnet50", "scratch", num_classes=3, ema_decay=0.0)
    groups = _group_of(module.parameter_groups(lr=1.0), module.model)
    expected_layer = {
        "conv1.weight": 0,
        "layer1.2.conv3.weight": 1,
        "layer2.1.conv1.weight": 2,
        "layer2.2.conv1.weight": 3,
        "layer3.2.conv2.weight": 4,
        "layer3.3.conv2.weight": 5,
        "layer4.0.downsample.0.weight": 6,
        "fc.weight": 7,
    }
    for name, layer in expected_layer.items():
        assert groups[name]["lr"] == pytest.approx(0.7 ** (7 - layer)), name
        assert groups[name]["weight_decay"] == 0.02, name
    for name in ("bn1.weight", "layer3.5.bn3.bias", "fc.bias"):
        assert groups[name]["weight_decay"] == 0.0, name
    assert groups["bn1.weight"]["lr"] == pytest.approx(0.7**7) and groups["fc.bias"]["lr"] == 1.0


def test_detection_layer_decay_and_weight_decay_follow_detectron2():
    """downstream_d2/lr_decay.py for ResNet-50 (N = 5): stem 0, res2 1, res3 2, res4 blocks 0-2 -> 3, 3-5 -> 4,
    res5 5, FPN / RPN / RoI heads 6; lr x 0.6^(6 - layer). detectron2: no decay on norms, biases decay."""
    module = DetectionModule("resnet50", "scratch", num_classes=2, train_sizes=[64], test_size=64)
    optimizer = module.configure_optimizers()["optimizer"]
    assert isinstance(optimizer, torch.optim.AdamW)
    groups = _group_of(optimizer.param_groups, module.model)
    lr = 2.5e-4 * 0.01  # the warm-up starts at 0.01 x each group's lr
    expected_layer = {
        "backbone.body.conv1.weight": 0,
        "backbone.body.layer1.0.conv1.weight": 1,
        "backbone.body.layer2.3.conv2.weight": 2,
        "backbone.body.layer3.2.conv2.weight": 3,
        "backbone.body.layer3.3.conv2.weight": 4,
        "backbone.body.layer4.2.conv3.weight": 5,
        "backbone.fpn.inner_blocks.0.0.weight": 6,
        "rpn.head.conv.0.0.weight": 6,
        "roi_heads.box_head.0.0.weight": 6,
        "roi_heads.mask_predictor.mask_fcn_logits.weight": 6,
    }
    for name, layer in expected_layer.items():
        assert groups[name]["lr"] == pytest.approx(lr * 0.6 ** (6 - layer)), name
        assert groups[name]["weight_decay"] == 1e-4, name
    assert groups["backbone.body.bn1.weight"]["weight_decay"] == 0.0  # norm layers: WEIGHT_DECAY_NORM 0
    assert groups["roi_heads.box_head.0.1.bias"]["weight_decay"] == 0.0  # the box head's BatchNorm
    assert groups["rpn.head.conv.0.0.bias"]["weight_decay"] == 1e-4  # biases decay (WEIGHT_DECAY_BIAS = wd)


def test_detection_multistep_schedule_warms_up_then_steps_down():
    """detectron2: factor 0.01 + 0.99 t / warmup during the warm-up, then x gamma at each milestone."""
    module = DetectionModule(
        "resnet18",
        "scratch",
        num_classes=2,
        train_sizes=[64],
        test_size=64,
        layer_decay=1.0,
        warmup_steps=4,
        milestones=[6, 8],
        gamma=0.25,
    )
    config = module.configure_optimizers()
    optimizer, schedule = config["optimizer"], config["lr_scheduler"]["scheduler"]
    factors = []
    for _ in range(10):
        factors.append(optimizer.param_groups[0]["lr"] / 2.5e-4)
        optimizer.step()
        schedule.step()
    expected = [0.01 + 0.99 * t / 4 for t in range(4)] + [1, 1, 0.25, 0.25, 0.0625, 0.0625]
    assert factors == pytest.approx(expected)


def test_linear_probe_head_is_batchnorm_without_affine_then_linear_and_only_it_trains():
    module = ClassificationModule("resnet18", "scratch", num_classes=3, mode="linear_probe")
    bn, linear = module.head
    assert type(bn) is nn.BatchNorm1d and not bn.affine and bn.eps == 1e-6 and bn.num_features == 512
    assert isinstance(linear, nn.Linear) and (linear.in_features, linear.out_features) == (512, 3)
    assert 0.003 < float(linear.weight.detach().std()) < 0.02  # MAE: trunc-normal, std 0.01
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    assert trainable == {"head.1.weight", "head.1.bias"}
    module.train()
    assert module.head.training and not module.model.training  # frozen BatchNorm statistics, the probe's BN runs


def test_linear_probe_lr_scales_with_the_batch_and_uses_lars(corpus):
    """MAE: lr = 0.1 x (batch x accumulation x devices) / 256; LARS adapts weights only (MoCo v3 rule)."""
    data = ClassificationData(str(corpus), "labels.csv", image_size=32, batch_size=4, augment="mae")
    module = ClassificationModule("resnet18", "scratch", num_classes=data.num_classes, mode="linear_probe")
    trainer = pl.Trainer(
        max_steps=1,
        accumulate_grad_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=data)
    assert module.lr_used == pytest.approx(0.1 * 8 / 256)
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, Lars)
    adapt = {tuple(p.shape): g["always_adapt"] for g in optimizer.param_groups for p in g["params"]}
    assert adapt == {(data.num_classes, 512): True, (data.num_classes,): False}


def test_finetune_mixup_targets_and_ema_once_per_optimizer_step(corpus):
    """Smoothed one-hot targets (timm: 1 - s + s/K on, s/K off); EMA after 2 optimizer steps of 2 batches each is
    d^2 w0 + d (1 - d) w1 + (1 - d) w2 with the weights w_k after step k."""
    data = ClassificationData(str(corpus), "labels.csv", image_size=32, batch_size=2)
    k = data.num_classes
    module = ClassificationModule("resnet18", "scratch", num_classes=k, ema_decay=0.5, mixup=0.1, drop_path=0.0)
    image, target = module.soft_targets(torch.rand(3, 3, 8, 8), torch.tensor([0, 1, 1]))  # odd batch: not mixed
    on, off = 1 - 0.1 + 0.1 / k, 0.1 / k
    assert torch.allclose(target[:, :2], torch.tensor([[on, off], [off, on], [off, on]])) and target.sum(1).allclose(
        torch.ones(3)
    )
    _, mixed = module.soft_targets(torch.rand(4, 3, 8, 8), torch.tensor([0, 0, 0, 1]))
    assert mixed.sum(1).tolist() == pytest.approx([1.0] * 4)

    key = "layer1.0.conv1.weight"
    seen = {0: module.model.state_dict()[key].clone()}

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen[trainer.global_step] = pl_module.model.state_dict()[key].clone()

    trainer = pl.Trainer(
        max_steps=2,
        accumulate_grad_batches=2,
        logger=False,
        enable_checkpointing=False,
        callbacks=[Record()],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=data)
    assert not torch.equal(seen[1], seen[0]) and not torch.equal(seen[2], seen[1])
    expected = 0.25 * seen[0] + 0.25 * seen[1] + 0.5 * seen[2]
    assert torch.allclose(module.ema.module[0].state_dict()[key], expected, atol=1e-6)
    assert isinstance(trainer.optimizers[0], Lamb)


def test_recipes_and_presets_carry_the_published_constants():
    spark = (SPARK_FINETUNE.optimizer, SPARK_FINETUNE.base_lr, SPARK_FINETUNE.layer_decay, SPARK_FINETUNE.weight_decay)
    assert spark == ("lamb", 2e-3, 0.7, 0.02)  # SparK downstream_imagenet/arg.py, resnet50 row
    assert (SPARK_FINETUNE.mixup, SPARK_FINETUNE.drop_path, SPARK_FINETUNE.ema_decay) == (0.1, 0.05, 0.9999)
    assert (SPARK_FINETUNE.warmup_epochs, SPARK_FINETUNE.warmup_start_ratio, SPARK_FINETUNE.min_lr_ratio) == (
        5,
        0.005,
        0.001,
    )
    assert (MAE_LINEAR_PROBE.optimizer, MAE_LINEAR_PROBE.base_lr, MAE_LINEAR_PROBE.weight_decay) == ("lars", 0.1, 0)

    def preset(name: str) -> dict:
        return yaml.safe_load((CONFIGS / name).read_text())

    classify = preset("classify_r50.yaml")
    assert classify["trainer"]["max_epochs"] == 300
    assert classify["data"]["batch_size"] * classify["trainer"]["accumulate_grad_batches"] == 2048
    probe = preset("probe_r50.yaml")
    assert probe["model"]["mode"] == "linear_probe" and probe["trainer"]["max_epochs"] == 90
    assert probe["data"]["batch_size"] * probe["trainer"]["accumulate_grad_batches"] == 16384
    detect = preset("detect_r50.yaml")
    model = detect["model"]
    assert (model["norm"], model["box_head"], model["trainable_layers"]) == ("bn", "4conv1fc", 5)
    assert (model["lr"], model["layer_decay"], model["milestones"], model["gamma"]) == (
        2.5e-4,
        0.6,
        [60000, 80000],
        0.25,
    )
    assert detect["trainer"]["max_steps"] == 90000 and detect["data"]["batch_size"] == 2
    assert model["train_sizes"] == list(range(480, 897, 32)) and model["test_size"] == 800


@pytest.mark.parametrize(
    ("config", "task", "recipe"),
    [("classify_r50.yaml", "classify", SPARK_FINETUNE), ("probe_r50.yaml", "classify", MAE_LINEAR_PROBE)],
)
def test_gpu_classification_presets_resolve_to_their_recipe(corpus, tmp_path, monkeypatch, config, task, recipe):
    from finetune.cli import FinetuneCLI

    monkeypatch.setattr("sys.argv", ["python -m finetune"])
    cli = FinetuneCLI(
        ClassificationModule,
        ClassificationData,
        run=False,
        args=["--config", str(CONFIGS / config), "--data.root", str(corpus), "--data.modalities", "null"]
        + ["--model.init", "scratch", "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)],
    )
    assert cli.model.recipe == recipe
    assert cli.datamodule.augment == ("spark" if recipe is SPARK_FINETUNE else "mae")


def test_gpu_detection_preset_builds_sparks_mask_rcnn(corpus, tmp_path, monkeypatch):
    from finetune.cli import FinetuneCLI
    from finetune.detect import DetectionData

    monkeypatch.setattr("sys.argv", ["python -m finetune"])
    cli = FinetuneCLI(
        DetectionModule,
        DetectionData,
        run=False,
        args=["--config", str(CONFIGS / "detect_r50.yaml"), "--data.root", str(corpus), "--data.modalities", "null"]
        + ["--model.init", "scratch", "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)],
    )
    model = cli.model.model
    assert model.transform.train_sizes == tuple(range(480, 897, 32)) and model.transform.test_size == 800
    assert model.rpn._post_nms_top_n == {"training": 1000, "testing": 1000}
    assert cli.trainer.max_steps == 90000 and cli.datamodule.batch_size == 2
