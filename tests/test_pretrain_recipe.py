"""The authors' recipe in the training module and data module: the realised mask split, the data pipeline,
the dataset statistics, the global batch and the presets (the two arms differ only in masking)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import yaml
from pytorch_lightning.loggers import CSVLogger
from torchvision import tv_tensors

from data.dataset import RoiDataset
from pretrain.cli import main
from pretrain.datamodule import RoiDataModule, per_device_batch
from pretrain.module import MaskedPretraining
from pretrain.pixel_stats import dataset_stats
from pretrain.transforms import train_transform
from tests.pretrain_lightning_fixtures import write_roi_corpus

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "pretrain"
SIZE = 128  # a 4 x 4 grid of 32 x 32 cells


@pytest.fixture(scope="module")
def roi_data(tmp_path_factory) -> tuple[Path, Path]:
    return write_roi_corpus(tmp_path_factory.mktemp("roi"), n=12)


def cell_roi(cells: list[list[tuple[int, int]]]) -> torch.Tensor:
    """(B,1,128,128) uint8 ROI maps covering exactly the listed (row, col) cells of each image."""
    roi = torch.zeros(len(cells), 1, SIZE, SIZE, dtype=torch.uint8)
    for b, image_cells in enumerate(cells):
        for r, c in image_cells:
            roi[b, 0, 32 * r : 32 * (r + 1), 32 * c : 32 * (c + 1)] = 1
    return roi


def realised(module: MaskedPretraining, roi: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The visible cells the training module's forward pass draws for `roi`."""
    batch = {"image": torch.rand(roi.shape[0], 3, SIZE, SIZE), "roi": roi}
    with torch.no_grad():
        return module(batch, torch.Generator().manual_seed(seed))["active_b1hw"][:, 0]


# ---------------------------------------------------------------------------------------------- masking
def test_the_module_masks_exactly_the_roi_cells_at_ratios_1_and_0():
    module = MaskedPretraining("resnet18", SIZE, decoder_width=32, r_roi=1.0, r_bg=0.0).eval()
    cells = [[(0, 0), (1, 2), (3, 3)], [(2, 0), (2, 1), (2, 2), (2, 3)]]
    active = realised(module, cell_roi(cells))
    for b, image_cells in enumerate(cells):
        expected = torch.ones(4, 4, dtype=torch.bool)
        for r, c in image_cells:
            expected[r, c] = False  # ROI: masked; background: visible
        assert torch.equal(active[b], expected)


def test_the_module_realises_the_count_formula_per_region():
    # 6 ROI cells at r_roi = 0.8 keep int(6 * 0.2) = 1, 10 background cells at r_bg = 0.4 keep int(10 * 0.6) = 6;
    # 5 ROI cells keep int(5 * 0.19999999999999996) = 0 (the fork's float count), 11 background keep 6
    module = MaskedPretraining("resnet18", SIZE, decoder_width=32, r_roi=0.8, r_bg=0.4).eval()
    six = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    roi = cell_roi([six, six[:5]])
    is_roi = roi[:, 0, ::32, ::32].bool()
    for seed in range(5):
        active = realised(module, roi, seed)
        assert (active & is_roi).flatten(1).sum(1).tolist() == [1, 0]
        assert (active & ~is_roi).flatten(1).sum(1).tolist() == [6, 6]
    out = module({"image": torch.rand(2, 3, SIZE, SIZE), "roi": roi}, torch.Generator().manual_seed(0))
    assert out["mask/realised_ratio"].item() == pytest.approx(1 - (7 + 6) / 32)
    assert out["mask/expected_ratio"].item() == pytest.approx(((0.8 * 6 + 0.4 * 10) + (0.8 * 5 + 0.4 * 11)) / 32)


def test_the_random_arm_keeps_sparks_rounded_count():
    module = MaskedPretraining("resnet18", 224, decoder_width=32, masking="random", mask_ratio=0.6).eval()
    batch = {"image": torch.rand(2, 3, 224, 224), "roi": torch.zeros(2, 1, 224, 224)}
    with torch.no_grad():
        active = module(batch, torch.Generator().manual_seed(0))["active_b1hw"]
    assert active.flatten(1).sum(1).tolist() == [20, 20]  # round(49 * 0.4) = round(19.6)


# ---------------------------------------------------------------------------------------------- data pipeline
def test_resize_pipeline_squashes_and_flips_image_and_roi_together():
    img = torch.rand(3, 40, 60)
    roi = torch.zeros(1, 40, 60, dtype=torch.uint8)
    roi[0, :, :15] = 1  # left quarter
    resized = F.interpolate(img[None], size=(32, 32), mode="bilinear", align_corners=False, antialias=False)[0]
    image, mask = train_transform(32, hflip=0.0)(tv_tensors.Image(img), tv_tensors.Mask(roi))
    torch.testing.assert_close(image, resized)  # the whole image, aspect not kept, no crop
    assert mask[0, :, :8].all() and not mask[0, :, 8:].any()
    image, mask = train_transform(32, hflip=1.0)(tv_tensors.Image(img), tv_tensors.Mask(roi))
    torch.testing.assert_close(image, resized.flip(-1))
    assert mask[0, :, -8:].all() and not mask[0, :, :-8].any()  # the ROI moved with the image


def test_random_resized_crop_option_moves_the_roi_with_the_image(roi_data):
    corpus, cache = roi_data
    transform = train_transform(64, "random_resized_crop", scale=(0.3, 1.0))
    dataset = RoiDataset(corpus, cache=cache, transform=transform)
    checked = 0
    for seed in range(3):
        torch.manual_seed(seed)
        for i in range(len(dataset)):
            item = dataset[i]
            image, roi = item["image"], item["roi"][0].bool()
            if 0 < roi.sum() < roi.numel():  # the ROI is the bright disk: it must still cover it
                assert image[0][roi].mean() > image[0][~roi].mean() + 0.2
                checked += 1
    assert checked > 10


def test_dataset_statistics_by_hand():
    half = torch.zeros(3, 4, 4)
    half[:, :, 2:] = 1.0  # mean 0.5, population std 0.5
    flat = torch.full((3, 4, 4), 0.2)  # mean 0.2, std 0
    items = [{"image": half}, {"image": flat}, {"image": torch.rand(3, 4, 4)}]
    stats = dataset_stats(items, n_images=2)  # the first two only
    assert stats.mean == pytest.approx((0.35,) * 3) and stats.std == pytest.approx((0.25,) * 3)
    assert stats.source == "dataset" and stats.n_images == 2
    with pytest.raises(ValueError, match="no contrast"):
        dataset_stats([{"image": flat}])


def test_dataset_statistics_from_a_seeded_random_sample():
    # item i is a constant image of value i / 100: the mean is the mean of the sampled indices / 100
    items = [{"image": torch.full((3, 4, 4), i / 100)} for i in range(50)]
    for item in items:
        item["image"][:, 0, 0] += 0.5  # some contrast, the same for every item
    offset = 0.5 / 16
    first = dataset_stats(items, n_images=10, sample="first")
    assert first.mean[0] == pytest.approx(4.5 / 100 + offset)  # 0..9: the first items only
    draws = [dataset_stats(items, n_images=10, sample="random", seed=s).mean[0] for s in range(4)]
    assert all(d > first.mean[0] + 0.05 for d in draws)  # a sample across the items, not the first ten
    assert dataset_stats(items, n_images=10, sample="random", seed=1).mean[0] == draws[1]  # seeded
    every = dataset_stats(items, n_images=100, sample="random", seed=3)
    assert every.n_images == 50 and every.mean[0] == pytest.approx(24.5 / 100 + offset)


def test_the_datamodule_computes_records_and_hands_over_the_dataset_statistics(roi_data, tmp_path):
    corpus, cache = roi_data
    dm = RoiDataModule(corpus, cache, input_size=64, batch_size=4, num_workers=0, stats_images=5, stats_sample="first")
    module = MaskedPretraining("resnet18", 64, decoder_width=32, lr=1e-3)
    run_folder = CSVLogger(tmp_path, name="", version="")  # log_dir = tmp_path
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=run_folder, enable_checkpointing=False)
    trainer.fit(module, dm)
    # independently: the first 5 training items, resized to 64 x 64 without antialiasing (OpenCV-like)
    raw = RoiDataset(corpus, cache=cache)
    first = [raw[dm.train_set.indices[i]]["image"] for i in range(5)]
    resized = [F.interpolate(x[None], (64, 64), mode="bilinear", antialias=False)[0].double() for x in first]
    mean = torch.stack([x.mean(dim=(1, 2)) for x in resized]).mean(0)
    std = torch.stack([x.std(dim=(1, 2), correction=0) for x in resized]).mean(0)
    assert dm.pixel_stats.mean == pytest.approx(mean.tolist(), abs=1e-6)
    assert dm.pixel_stats.std == pytest.approx(std.tolist(), abs=1e-6)
    assert module.pixel_mean.flatten().tolist() == pytest.approx(mean.tolist(), abs=1e-6)  # the module uses them
    assert module.pixel_std.flatten().tolist() == pytest.approx(std.tolist(), abs=1e-6)
    recorded = json.loads((tmp_path / "pixel_stats.json").read_text())
    assert recorded["mean"] == pytest.approx(mean.tolist(), abs=1e-6) and recorded["n_images"] == 5
    assert dm.hparams["pixel_stats"]["source"] == "dataset"
    imagenet = RoiDataModule(corpus, cache, input_size=64, batch_size=4, num_workers=0, normalize="imagenet")
    imagenet.setup("fit")
    assert imagenet.pixel_stats.mean == pytest.approx((0.485, 0.456, 0.406))


# ---------------------------------------------------------------------------------------------- global batch
def test_global_batch_is_divided_over_devices_and_accumulation():
    def trainer(devices: int, accumulate: int = 1) -> pl.Trainer:
        return pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp", accumulate_grad_batches=accumulate)

    assert per_device_batch(128, None) == 128
    assert per_device_batch(128, trainer(2)) == 64
    assert per_device_batch(128, trainer(2, accumulate=2)) == 32
    with pytest.raises(ValueError, match="128 is not divisible by 3 device"):
        per_device_batch(128, trainer(3))
    with pytest.raises(ValueError, match="not both"):
        RoiDataModule("c", "c.zarr", global_batch_size=128, batch_size=64)


def test_the_lr_follows_the_global_batch(roi_data, tmp_path, monkeypatch):
    corpus, cache = roi_data
    monkeypatch.chdir(tmp_path)  # a run without a logger writes nothing into the working directory
    dm = RoiDataModule(corpus, cache, input_size=64, global_batch_size=8, num_workers=0, normalize="imagenet")
    module = MaskedPretraining("resnet18", 64, decoder_width=32, base_lr=2e-4, warmup_epochs=0)
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=1, accumulate_grad_batches=2, logger=False, enable_checkpointing=False
    )
    trainer.fit(module, dm)
    assert dm.batch_size == 4 and module.effective_batch_size() == 8
    assert module.learning_rate() == pytest.approx(2e-4 * 8 / 256)
    assert not (tmp_path / "pixel_stats.json").exists() and dm.hparams["pixel_stats"]["source"] == "imagenet"


# ---------------------------------------------------------------------------------------------- presets
def parsed(preset: str, capsys) -> dict:
    with pytest.raises(SystemExit) as exited:
        main(["fit", "--config", str(CONFIGS / preset), "--print_config"])
    assert exited.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_presets_are_in_the_authors_units_and_differ_only_in_masking(capsys):
    mwm, spark = parsed("mwm_resnet50.yaml", capsys), parsed("spark_resnet50.yaml", capsys)
    model, data, trainer = mwm["model"], mwm["data"], mwm["trainer"]
    assert (model["backbone"], model["input_size"], model["decoder"], model["decoder_width"]) == (
        "resnet50",
        224,
        "spark",
        768,
    )
    assert (model["masking"], model["r_roi"], model["r_bg"], model["roi_rule"]) == (
        "differentiated",
        0.8,
        0.4,
        "nearest",
    )
    assert (model["optimizer"], model["base_lr"], model["warmup_epochs"]) == ("lamb", 2e-4, 40)
    assert (model["weight_decay"], model["weight_decay_end"], model["per_channel_target"]) == (0.04, 0.2, False)
    assert (data["global_batch_size"], data["batch_size"], data["augment"], data["normalize"]) == (
        128,
        None,
        "resize",
        "dataset",
    )
    assert (trainer["max_epochs"], trainer["gradient_clip_val"], data["stats_images"]) == (500, 5.0, 1000)
    assert (spark["model"]["masking"], spark["model"]["mask_ratio"]) == ("random", 0.6)

    def flat(config: dict) -> dict:
        return {f"{s}.{k}": v for s, section in config.items() if isinstance(section, dict) for k, v in section.items()}

    a, b = flat(mwm), flat(spark)
    differing = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    assert differing == {"model.masking", "trainer.default_root_dir"}  # ratios unused by the other arm stay equal


def test_tiny_cpu_preset_parses(capsys):
    config = parsed("tiny_cpu.yaml", capsys)
    assert config["model"]["backbone"] == "resnet18" and config["data"]["batch_size"] == 8
    assert config["trainer"]["precision"] == "32-true" and config["trainer"]["accelerator"] == "cpu"
