"""MaskedCLIP end to end on the sample corpus and its reports: a few real training steps through the CLI, the exports,
then `finetune classify` / `segment` from the timm export (strict load, the export's OpenAI statistics), detection
refusing the ViT, zero-shot with the open_clip export, and no report text in any output of the run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from data.clip_folder import OPENAI_MEAN, OPENAI_STD
from data.sample import write_sample_corpus
from finetune.__main__ import main as finetune_main
from finetune.backbone import pretrained_statistics
from finetune.classify import ClassificationData, ClassificationModule
from finetune.maskrcnn import build_mask_rcnn
from finetune.unet import UNet
from finetune.vit_pyramid import vit_levels
from localize.import_masks import import_masks
from pretrain.cli import main as pretrain_main
from pretrain.export import load_backbone
from pretrain.maskedclip.export import load_trained_model
from tests.maskedclip_fixtures import cpu_preset_fit_args

REPO = Path(__file__).resolve().parents[1]
SIZE = 64
# words only the sample reports use (their phrasings and location words; data/sample/reports.py)
REPORT_WORDS = ("parietal", "occipital", "frontal", "radiograph", "thorax", "lobe", "zone", "nodule", "opacity")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings(
        "ignore::UserWarning",
        "ignore::DeprecationWarning",
        "ignore::FutureWarning",
        "ignore::pytorch_lightning.utilities.warnings.PossibleUserWarning",
    ),
]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> dict[str, Path]:
    """Sample corpus (reports for all non-test images) + ROI cache of its truth masks -> 4 steps of the CPU preset
    -> both exports."""
    root = tmp_path_factory.mktemp("mc_sample")
    corpus, cache = root / "corpus", root / "roi_cache.zarr"
    write_sample_corpus(corpus, n=6, seed=0, size=SIZE, report_share=1.0)
    import_masks(corpus / "truth", cache, corpus=corpus, progress=False)
    args = cpu_preset_fit_args(
        corpus,
        cache,
        corpus / "reports.csv",
        f"--trainer.default_root_dir={root / 'run'}",
        f"--model.vision.input_size={SIZE}",
        "--data.val_fraction=0",
        "--trainer.max_steps=4",
        "--trainer.enable_progress_bar=false",
        "--panel.every_n_steps=2",
    )
    assert pretrain_main(args) == 0
    ckpt = root / "run" / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    export = ["maskedclip", "export", str(ckpt), "--open-clip", str(root / "clip"), "--timm", str(root / "vit.pt")]
    assert pretrain_main(export) == 0
    return {"root": root, "corpus": corpus, "ckpt": ckpt, "vit": root / "vit.pt", "clip": root / "clip"}


def run_task(task: str, config: str, pretrained: dict, tmp_path: Path, *extra: str) -> dict:
    args = [task, "fit", "--config", str(REPO / config), f"--data.root={pretrained['corpus']}"]
    args += ["--model.backbone=test_vit2", f"--model.init={pretrained['vit']}", f"--data.image_size={SIZE}"]
    args += ["--trainer.max_epochs=1", "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false"]
    args += [f"--trainer.default_root_dir={tmp_path}", f"--results_dir={tmp_path / 'results'}", *extra]
    assert finetune_main(args) == 0
    (results,) = (tmp_path / "results").glob(f"{task}-test_vit2-pretrained-*.json")
    return json.loads(results.read_text())


def assert_strict_load(out: dict, pretrained: dict) -> None:
    report = out["details"]["load_report"]
    n_tensors = len(torch.load(pretrained["vit"], weights_only=True))
    assert report["n_missing"] == 0 and report["n_unexpected"] == 0 and report["n_loaded"] == n_tensors
    assert out["init_source"] == os.path.relpath(pretrained["vit"])  # results JSON: no absolute path
    # images normalised with the statistics the encoder was pretrained with (the export's sidecar), not ImageNet's
    assert out["config"]["data"]["normalization"] == [list(OPENAI_MEAN), list(OPENAI_STD)]


def test_classify_starts_from_the_maskedclip_encoder(pretrained, tmp_path):
    out = run_task("classify", "configs/finetune/classify_tiny.yaml", pretrained, tmp_path, "--data.modalities=[XR]")
    assert_strict_load(out, pretrained)
    assert set(out["metrics"]) >= {"accuracy", "auroc"} and 0 <= out["metrics"]["accuracy"] <= 1


def test_the_finetune_backbone_is_the_encoder_that_was_trained(pretrained):
    """Same tokens from the fine-tuning ViT, on an image through classify's evaluation pipeline, as from MaskedCLIP's
    encoder E on the image normalised as in pretraining: a wrong depth, a missed tensor or ImageNet's statistics
    would change them."""
    raw_3hw = torch.rand(3, SIZE, SIZE)
    clip_in = ((raw_3hw - torch.tensor(OPENAI_MEAN)[:, None, None]) / torch.tensor(OPENAI_STD)[:, None, None])[None]

    def evaluation_input(normalization) -> torch.Tensor:
        data = ClassificationData(
            pretrained["corpus"], modalities=["XR"], image_size=SIZE, augment="none", normalization=normalization
        )
        return data.split_dataset("test").transform(raw_3hw)[None]

    x = evaluation_input(pretrained_statistics(str(pretrained["vit"])))
    assert torch.allclose(x, clip_in, atol=1e-5) and not torch.allclose(evaluation_input(None), clip_in, atol=1e-2)
    trained = load_trained_model(pretrained["ckpt"])
    module = ClassificationModule("test_vit2", str(pretrained["vit"]), num_classes=2, mode="linear_probe").eval()
    with torch.no_grad():
        # test_vit2 pools by average: timm's forward_features is the stream without a final norm (E's own
        # `feature_norm`, which the decoders read, is not part of the timm export)
        expected_btc = trained.model.encoder(clip_in).stream_btc
        got_btc = module.model.forward_features(x)
    assert torch.allclose(got_btc, expected_btc, atol=1e-5)


def test_the_one_export_reader_builds_the_encoders_depth(pretrained):
    model = load_backbone(pretrained["vit"])  # name, depth (8 - 2 bridge blocks) and weights from the sidecar
    assert len(model.blocks) == 6 and model.num_classes == 0


def test_segment_builds_a_pyramid_on_the_vit(pretrained, tmp_path):
    out = run_task("segment", "configs/finetune/segment_tiny.yaml", pretrained, tmp_path)
    assert_strict_load(out, pretrained)
    assert 0 <= out["metrics"]["dice"] <= 1
    net = UNet("test_vit2", str(pretrained["vit"]), num_classes=2)
    feats = net.neck(net.encoder(torch.rand(1, 3, SIZE, SIZE)))
    assert [f.shape[-1] for f in feats] == [SIZE // 4, SIZE // 8, SIZE // 16, SIZE // 32]
    assert net(torch.rand(2, 3, SIZE, SIZE)).shape == (2, 2, SIZE, SIZE)


def test_pyramid_levels_are_beits_blocks_scaled_to_the_depth():
    # BEiT / MAE segmentation: blocks 3, 5, 7, 11 of ViT-B; 10 blocks (GPU preset's E): 3.3, 5, 6.7, 10 -> 2, 4, 6, 9
    assert vit_levels(12) == (3, 5, 7, 11) and vit_levels(10) == (2, 4, 6, 9)
    assert vit_levels(6) == (1, 2, 3, 5) and vit_levels(4) == (0, 1, 2, 3)
    with pytest.raises(ValueError, match="at least 4 blocks"):
        vit_levels(3)


def test_detection_refuses_a_vit_with_a_clear_message(pretrained):
    with pytest.raises(ValueError, match="convolutional backbones only.*'test_vit2' is a plain ViT"):
        build_mask_rcnn("test_vit2", str(pretrained["vit"]), num_classes=2)


def test_zeroshot_with_the_open_clip_export(pretrained, tmp_path):
    args = ["zeroshot", "--clip", f"local-dir:{pretrained['clip']}", "--prompts"]
    args += [str(REPO / "configs/zeroshot/sample.yaml"), "--root", str(pretrained["corpus"]), "--split", "all"]
    assert finetune_main([*args, "--modalities", "MR", "--results-dir", str(tmp_path)]) == 0
    (results,) = tmp_path.glob("zeroshot-clip-pretrained-*.json")
    out = json.loads(results.read_text())
    assert out["n_test"] == 6 and out["details"]["class_names"] == ["no_tumor", "tumor"]
    assert 0 <= out["metrics"]["accuracy"] <= 1 and 0 <= out["metrics"]["auroc"] <= 1


def test_no_sample_report_reaches_any_output_of_the_run(pretrained):
    root = pretrained["root"]
    reports = pd.read_csv(pretrained["corpus"] / "reports.csv")["report"].str.lower().tolist()
    assert len(reports) == 16  # every non-test image of the 18 (split by patient: 2 X-rays are test)
    outputs = [p for folder in (root / "run", root / "clip") for p in folder.rglob("*") if p.is_file()]
    outputs += [root / "vit.pt", root / "vit.pt.json"]
    assert len(outputs) > 8
    for path in outputs:
        data = path.read_bytes().lower()
        for text in (*REPORT_WORDS, *reports):
            assert text.encode() not in data, (text[:20], path)
    hparams = torch.load(pretrained["ckpt"], map_location="cpu", weights_only=True)["datamodule_hyper_parameters"]
    assert hparams["reports"].endswith("reports.csv")  # a path, never the text
    assert np.isfinite(pd.read_csv(root / "run/logs/version_0/metrics.csv")["train/loss"].dropna()).all()
