"""Lightning pretraining: schedules, data module, training, exact resume, panels, export and the CLI presets.

Everything runs on the CPU with ResNet-18 at 64 px on a 20-image corpus (tests/pretrain_lightning_fixtures.py).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import timm
import torch
from PIL import Image
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from pretrain.callbacks import PANEL_COLUMNS, ReconstructionPanel
from pretrain.cli import default_loggers, main
from pretrain.datamodule import EpochSampler, ResumableLoader, RoiDataModule, SeededItems
from pretrain.module import MaskedPretraining
from pretrain.schedules import WarmupCosineSchedule
from tests.pretrain_lightning_fixtures import write_roi_corpus

N_ITEMS = 20  # 19 done, 1 pending
SIZE = 64
BATCH = 4

pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning",
    "ignore::DeprecationWarning",
    "ignore::FutureWarning",
    "ignore::pytorch_lightning.utilities.warnings.PossibleUserWarning",
)


# ---------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny convolutions on 2 shared cores: one intra-op thread is ~10x faster than two fighting for them."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def roi_data(tmp_path_factory) -> tuple[Path, Path]:
    return write_roi_corpus(tmp_path_factory.mktemp("roi"), n=N_ITEMS)


def tiny_module(**overrides) -> MaskedPretraining:
    args = dict(backbone="resnet18", input_size=SIZE, decoder_width=32, warmup_epochs=0.5)
    return MaskedPretraining(**{**args, **overrides})


def tiny_data(roi_data, **overrides) -> RoiDataModule:
    corpus, cache = roi_data
    args = dict(input_size=SIZE, batch_size=BATCH, num_workers=0, val_fraction=0.25)
    return RoiDataModule(corpus, cache, **{**args, **overrides})


def tiny_trainer(root: Path, loggers=None, callbacks=(), **overrides) -> pl.Trainer:
    args = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=root,
        gradient_clip_val=5.0,
    )
    return pl.Trainer(
        logger=loggers if loggers is not None else CSVLogger(root), callbacks=list(callbacks), **{**args, **overrides}
    )


def read_metrics(trainer: pl.Trainer) -> pd.DataFrame:
    csv = next(lg for lg in trainer.loggers if isinstance(lg, CSVLogger))
    return pd.read_csv(Path(csv.log_dir) / "metrics.csv")


def train_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    return metrics.dropna(subset=["train/loss"]).set_index("step").sort_index()


@pytest.fixture(scope="module")
def reference_run(roi_data, tmp_path_factory):
    """Two epochs with LAMB, TensorBoard + CSV in one folder, a checkpoint per epoch and panels every 2 steps."""
    root = tmp_path_factory.mktemp("run_a")
    pl.seed_everything(0)
    loggers = default_loggers(root)
    for logger in loggers:
        _ = logger.version  # as PretrainCLI does: resolve before any folder exists
    checkpoints = ModelCheckpoint(save_top_k=-1, every_n_epochs=1, save_last=True)
    trainer = tiny_trainer(root, loggers, [checkpoints, ReconstructionPanel(every_n_steps=2, max_images=3)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # one worker process: its first indices are drawn before Lightning's set_epoch on a resumed run
        trainer.fit(tiny_module(optimizer="lamb", lr=2e-3), tiny_data(roi_data, num_workers=1))
    return trainer, Path(checkpoints.dirpath)


def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------- schedules
def test_warmup_cosine_lr_and_weight_decay_ramp_survive_a_state_dict_round_trip():
    def optimizer():
        w, b = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.zeros(2))
        return torch.optim.AdamW([{"params": [b], "weight_decay": 0.0}, {"params": [w], "weight_decay": 0.04}], lr=1e-3)

    opt = optimizer()
    sched = WarmupCosineSchedule(opt, weight_decay_end=0.2)
    sched.set_horizon(total_steps=100, warmup_steps=10)
    lrs, wds = [], []
    for step in range(100):
        lrs.append(opt.param_groups[1]["lr"])
        wds.append(opt.param_groups[1]["weight_decay"])
        assert opt.param_groups[0]["weight_decay"] == 0.0  # no-decay groups stay at 0
        assert opt.param_groups[0]["lr"] == lrs[-1]
        opt.step()
        sched.step()
        if step == 49:
            saved = sched.state_dict()
    assert lrs[0] == pytest.approx(0.005e-3) and lrs[10] == pytest.approx(1e-3)
    assert np.all(np.diff(lrs[:11]) > 0) and np.all(np.diff(lrs[10:]) < 0)
    assert lrs[-1] == pytest.approx(1e-6)
    assert wds[0] == pytest.approx(0.04) and wds[-1] == pytest.approx(0.2) and np.all(np.diff(wds) > 0)

    # a fresh scheduler loading the step-50 state continues on the same curve
    opt2 = optimizer()
    sched2 = WarmupCosineSchedule(opt2, weight_decay_end=0.2)
    sched2.load_state_dict(saved)
    sched2.set_horizon(total_steps=100, warmup_steps=10)
    assert opt2.param_groups[1]["lr"] == pytest.approx(lrs[50])
    assert opt2.param_groups[1]["weight_decay"] == pytest.approx(wds[50])


def test_no_weight_decay_on_norms_biases_and_mask_tokens():
    module = tiny_module(lr=1e-3)
    config = module.configure_optimizers()
    optimizer = config["optimizer"]
    assert isinstance(optimizer, timm.optim.Lamb) and optimizer.defaults["betas"] == (0.9, 0.95)
    assert config["lr_scheduler"]["interval"] == "step"
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    names = dict(module.model.named_parameters())
    assert len(decay_of) == len(names)
    for name, p in names.items():
        no_decay = p.ndim <= 1 or name.endswith(".bias") or "mask_token" in name
        assert decay_of[id(p)] == (0.0 if no_decay else 0.04), name
    assert any("mask_token" in n and p.ndim == 4 for n, p in names.items())  # 4-D, excluded by name
    assert isinstance(tiny_module(lr=1e-3, optimizer="adamw").configure_optimizers()["optimizer"], torch.optim.AdamW)


# ---------------------------------------------------------------------------------------------- data
def test_datamodule_keeps_done_items_and_splits_validation_stably(roi_data):
    dm = tiny_data(roi_data)
    dm.setup("fit")
    train_idx = {dm.train_set[i]["index"] for i in range(len(dm.train_set))}
    val_idx = {dm.val_set[i]["index"] for i in range(len(dm.val_set))}
    assert not train_idx & val_idx and len(train_idx | val_idx) == N_ITEMS - 1
    assert N_ITEMS - 1 not in train_idx | val_idx  # the pending item
    again = tiny_data(roi_data)
    again.setup("fit")
    assert {again.val_set[i]["index"] for i in range(len(again.val_set))} == val_idx

    everything = tiny_data(roi_data, only_done=False, val_fraction=0.0)
    everything.setup("fit")
    assert len(everything.train_set) == N_ITEMS and everything.val_set is None
    pending = next(everything.train_set[i] for i in range(N_ITEMS) if everything.train_set[i]["index"] == N_ITEMS - 1)
    assert pending["roi"].sum() == 0  # not localized: empty ROI


def test_intensity_settings_reach_the_images(roi_data):
    default = tiny_data(roi_data)
    fixed = tiny_data(roi_data, intensity={"per_modality": {"OT": {"value_range": [0, 255]}}})
    default.setup("fit")
    fixed.setup("fit")
    a, b = default.val_set[0], fixed.val_set[0]
    assert a["index"] == b["index"] and a["item_id"] == b["item_id"]
    assert not torch.allclose(a["image"], b["image"])  # percentile scaling vs a fixed 0..255 range
    assert torch.equal(a["roi"], b["roi"])


def test_joint_augmentation_moves_the_roi_with_the_image_and_is_seeded_by_epoch_and_item(roi_data):
    dm = tiny_data(roi_data, val_fraction=0.0, scale=(0.3, 1.0))
    dm.setup("fit")
    items = SeededItems(dm.train_set, seed=0)
    checked = 0
    for epoch in range(3):
        for i in range(len(items)):
            item = items[(epoch, i)]
            image, roi = item["image"], item["roi"][0].bool()
            assert image.shape == (3, SIZE, SIZE) and roi.shape == (SIZE, SIZE)
            if 0 < roi.sum() < roi.numel():  # the ROI is the bright disk: it must still cover it
                assert image[0][roi].mean() > image[0][~roi].mean() + 0.2
                checked += 1
    assert checked > 20
    a, b, c = items[(0, 3)], items[(0, 3)], items[(1, 3)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["roi"], b["roi"])
    assert not torch.equal(a["image"], c["image"])


def test_epoch_sampler_shards_ranks_and_reshuffles_per_epoch():
    data = list(range(10))
    ranks = [EpochSampler(data, num_replicas=2, rank=r, shuffle=True, seed=0) for r in (0, 1)]
    first = [list(s) for s in ranks]
    assert all(epoch == 0 for part in first for epoch, _ in part)
    assert sorted(i for part in first for _, i in part) == data
    for s in ranks:
        s.set_epoch(1)
    second = [[i for _, i in s] for s in ranks]
    assert second != [[i for _, i in part] for part in first]
    assert [list(s) for s in ranks] == [[(1, i) for i in part] for part in second]  # a function of the epoch
    # Skipping applies to the next iteration only, and cuts this rank's share of the same permutation.
    ranks[0].skip_next(2)
    assert [i for _, i in ranks[0]] == second[0][2:]
    assert [i for _, i in ranks[0]] == second[0]


def test_resumable_loader_warns_when_the_device_count_changed():
    sampler = EpochSampler(list(range(8)), num_replicas=2, rank=0, shuffle=True, seed=0)
    loader = ResumableLoader(list(range(8)), batch_size=2, sampler=sampler)
    assert loader.state_dict() == {"num_replicas": 2}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loader.load_state_dict({"num_replicas": 2})
    with pytest.warns(UserWarning, match="checkpointed on 1"):
        loader.load_state_dict({"num_replicas": 1})


# ---------------------------------------------------------------------------------------------- training
def test_training_reduces_the_loss_and_logs_every_step(roi_data, tmp_path):
    # one batch seen again and again (new masks each step): the loss must fall below ~1, the score of
    # predicting every masked patch's mean (the per-patch normalised target has unit variance)
    pl.seed_everything(0)
    trainer = tiny_trainer(tmp_path, max_epochs=30, overfit_batches=1, enable_checkpointing=False)
    trainer.fit(
        tiny_module(optimizer="adamw", lr=3e-3, warmup_epochs=0, weight_decay=0.0, weight_decay_end=0.0),
        tiny_data(roi_data, val_fraction=0.0),
    )
    rows = train_rows(read_metrics(trainer))
    assert list(rows.index) == list(range(30))
    for name in ("lr", "wd", "mask/expected_ratio", "mask/realised_ratio", "mask/empty_roi_share"):
        assert rows[name].notna().all(), name
    assert rows["mask/realised_ratio"].between(0, 1).all() and rows["mask/empty_roi_share"].between(0, 1).all()
    loss = rows["train/loss"].to_numpy()
    assert np.isfinite(loss).all()
    assert loss[-5:].mean() < loss[:5].mean() - 0.05 and loss[-5:].mean() < 0.99, loss


def test_learning_rate_scales_with_the_effective_batch(roi_data, tmp_path):
    trainer = tiny_trainer(
        tmp_path, max_steps=1, max_epochs=None, accumulate_grad_batches=2, enable_checkpointing=False
    )
    module = tiny_module(base_lr=2e-4, lr=None, warmup_epochs=0)
    trainer.fit(module, tiny_data(roi_data, val_fraction=0.0))
    assert module.effective_batch_size() == BATCH * 2
    rows = train_rows(read_metrics(trainer))
    assert rows["lr"].iloc[0] == pytest.approx(2e-4 * BATCH * 2 / 256)
    assert rows["wd"].iloc[0] == pytest.approx(0.04)


def test_resume_continues_at_the_same_step_with_the_same_state(reference_run, roi_data, tmp_path):
    trainer_a, ckpt_dir = reference_run
    steps_per_epoch = trainer_a.global_step // 2
    first_epoch = ckpt_dir / f"epoch=0-step={steps_per_epoch}.ckpt"
    assert first_epoch.is_file() and load_ckpt(first_epoch)["global_step"] == steps_per_epoch

    pl.seed_everything(123)  # a different global RNG state must not matter
    checkpoints = ModelCheckpoint(save_top_k=-1, every_n_epochs=1)
    trainer_b = tiny_trainer(tmp_path, callbacks=[checkpoints])
    trainer_b.fit(tiny_module(optimizer="lamb", lr=2e-3), tiny_data(roi_data, num_workers=1), ckpt_path=first_epoch)

    rows_a, rows_b = train_rows(read_metrics(trainer_a)), train_rows(read_metrics(trainer_b))
    assert list(rows_b.index) == list(range(steps_per_epoch, 2 * steps_per_epoch))
    for name in ("train/loss", "lr", "wd", "mask/realised_ratio"):
        np.testing.assert_allclose(rows_b[name], rows_a.loc[rows_b.index, name], rtol=1e-5, err_msg=name)
    val_a = read_metrics(trainer_a)["val/loss"].dropna().to_numpy()
    val_b = read_metrics(trainer_b)["val/loss"].dropna().to_numpy()
    np.testing.assert_allclose(val_b, val_a[-1:], rtol=1e-5)

    end_a = load_ckpt(ckpt_dir / f"epoch=1-step={2 * steps_per_epoch}.ckpt")
    end_b = load_ckpt(Path(checkpoints.dirpath) / f"epoch=1-step={2 * steps_per_epoch}.ckpt")
    assert end_b["global_step"] == end_a["global_step"] == 2 * steps_per_epoch
    state_a, state_b = end_a["optimizer_states"][0]["state"], end_b["optimizer_states"][0]["state"]
    assert state_a.keys() == state_b.keys() and len(state_a) > 0
    for key in state_a:
        for name, tensor in state_a[key].items():
            torch.testing.assert_close(state_b[key][name], tensor, rtol=1e-5, atol=1e-7)
    for name, tensor in end_a["state_dict"].items():
        torch.testing.assert_close(end_b["state_dict"][name], tensor, rtol=1e-5, atol=1e-6)
    assert end_b["lr_schedulers"][0]["last_epoch"] == end_a["lr_schedulers"][0]["last_epoch"]


def test_resume_from_a_mid_epoch_checkpoint_sees_the_rest_of_that_epoch(roi_data, tmp_path):
    every_step = ModelCheckpoint(save_top_k=-1, every_n_train_steps=1, filename="{step}")
    trainer_a = tiny_trainer(tmp_path / "a", callbacks=[every_step])
    trainer_a.fit(tiny_module(), tiny_data(roi_data, num_workers=1))
    rows_a, steps_per_epoch = train_rows(read_metrics(trainer_a)), trainer_a.global_step // 2
    final_a = trainer_a.lightning_module.state_dict()
    for step in (1, steps_per_epoch + 1):  # inside the first epoch, and inside the second
        trainer_b = tiny_trainer(tmp_path / f"b{step}")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer_b.fit(
                tiny_module(),
                tiny_data(roi_data, num_workers=1),
                ckpt_path=Path(every_step.dirpath) / f"step={step}.ckpt",
            )
        assert not [w for w in caught if "not resumable" in str(w.message)]
        rows_b = train_rows(read_metrics(trainer_b))
        assert list(rows_b.index) == list(range(step, 2 * steps_per_epoch))
        # Same batches in the same order, hence the same losses and masks, and the same weights at the end.
        for name in ("train/loss", "mask/realised_ratio"):
            np.testing.assert_allclose(rows_b[name], rows_a.loc[rows_b.index, name], rtol=1e-5, err_msg=name)
        for name, tensor in trainer_b.lightning_module.state_dict().items():
            torch.testing.assert_close(tensor, final_a[name], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- outputs
def test_panel_png_shows_image_roi_mask_and_reconstruction(reference_run):
    trainer, _ = reference_run
    log_dir = Path(trainer.log_dir)
    assert (log_dir / "metrics.csv").is_file() and list(log_dir.glob("events.out.tfevents.*"))
    pngs = sorted((log_dir / "panels").glob("step_*.png"))
    assert [p.name for p in pngs] == [f"step_{s:07d}.png" for s in range(2, trainer.global_step + 1, 2)]
    panel = np.asarray(Image.open(pngs[-1]).convert("RGB")).astype(int)
    tile, pad, cell = SIZE + 2, 2, 32
    assert panel.shape == (3 * tile + pad, len(PANEL_COLUMNS) * tile + pad, 3)
    masked = visible = 0
    for row in range(3):
        y = pad + row * tile
        image, _, shown, recon = (panel[y : y + SIZE, pad + c * tile : pad + c * tile + SIZE] for c in range(4))
        for cy in range(0, SIZE, cell):
            for cx in range(0, SIZE, cell):
                window = np.s_[cy : cy + cell, cx : cx + cell]
                # (1 grey level of slack: the recon went through normalise / denormalise)
                if (shown[window] == 128).all():  # masked cell: grey in the "visible" column, predicted
                    masked += 1
                    assert np.abs(recon[window] - image[window]).mean() > 2
                else:  # visible cell: shown as is, and the reconstruction pastes the input
                    visible += 1
                    assert np.array_equal(shown[window], image[window])
                    assert np.abs(recon[window] - image[window]).max() <= 1
    assert masked > 0 and visible > 0

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    events.Reload()
    tag = "panel/" + "|".join(PANEL_COLUMNS)
    assert tag in events.Tags()["images"] and len(events.Images(tag)) == len(pngs)


def test_export_cli_writes_a_timm_state_dict(reference_run, tmp_path, capsys):
    _, ckpt_dir = reference_run
    out = tmp_path / "backbone.pt"
    assert main(["export", str(ckpt_dir / "last.ckpt"), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["backbone"] == "resnet18"
    weights = torch.load(out, map_location="cpu", weights_only=True)
    model = timm.create_model("resnet18", pretrained=False)
    result = model.load_state_dict(weights, strict=False)
    assert result.unexpected_keys == [] and sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    assert set(model.state_dict()) - {"fc.weight", "fc.bias"} == set(weights)
    trained = load_ckpt(ckpt_dir / "last.ckpt")["state_dict"]
    for name, tensor in weights.items():
        assert torch.equal(tensor, trained["model.encoder.model." + name]), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_bf16_mixed_steps_on_the_gpu(roi_data, tmp_path):
    trainer = tiny_trainer(
        tmp_path, accelerator="gpu", precision="bf16-mixed", max_steps=3, max_epochs=None, enable_checkpointing=False
    )
    module, data = tiny_module(lr=1e-3), tiny_data(roi_data, val_fraction=0.0, num_workers=1)
    trainer.fit(module, data)
    assert module.device.type == "cuda" and data.train_dataloader().pin_memory
    rows = train_rows(read_metrics(trainer))
    assert list(rows.index) == [0, 1, 2] and np.isfinite(rows["train/loss"]).all()


def test_a_square_store_trains_on_float_images_it_ships_as_uint8(roi_data, tmp_path):
    """A square uint8 store's batches leave the loader as uint8; the training step sees them in [0, 1] float."""
    from data.intensity import IntensityConfig
    from data.packed_store import PackedStore
    from data.packing import pack_corpus
    from data.roi_cache import RoiCache

    corpus, cache = roi_data
    store = PackedStore.create(tmp_path / "sq.zarr", RoiCache.open(cache).manifest(), IntensityConfig(), square=SIZE)
    pack_corpus(store, corpus, progress=False)
    seen = []

    class Probe(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append((batch["image"].dtype, float(batch["image"].max())))

    data = tiny_data(roi_data, packed=tmp_path / "sq.zarr", normalize="imagenet")
    data.setup("fit")
    assert next(iter(data.train_dataloader()))["image"].dtype == torch.uint8
    trainer = tiny_trainer(tmp_path, callbacks=[Probe()], max_epochs=1, max_steps=2, enable_checkpointing=False)
    trainer.fit(tiny_module(), data)
    assert len(seen) == 2 and all(dtype == torch.float32 and 0.5 < peak <= 1.0 for dtype, peak in seen), seen
