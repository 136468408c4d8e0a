"""`localize tune` and `localize prompts`: the criteria's hand-checkable properties, the choice rule, the written
config and report. How well each criterion tracks Dice on the small models is measured by the command itself
(docs/MODELS.md gives the figures and the command), not asserted here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from data.sample import write_sample_corpus
from localize.config import LocalizeConfig
from localize.prompt_report import prompt_agreement
from localize.tune import Tuner, choose
from localize.tune import main as tune_main
from localize.tune_criteria import crop_contrast, deletion_evidence, iou_with_others, mean_pairwise_iou
from tests.localize_fixtures import clip, standins  # noqa: F401 - fixtures


def test_evidence_is_zero_for_the_whole_image_and_signed_by_place(clip):  # noqa: F811
    text_d = clip.model.encode_text(clip.tokenizer(["brain tumor"]))[0]
    text_d = text_d / text_d.norm()
    rng = np.random.default_rng(0)
    image = rng.random((64, 64)).astype(np.float32)
    whole = np.ones((64, 64), bool)
    # the rolled whole-image ROI is the whole image: both deletions are the same, evidence exactly 0
    assert deletion_evidence(clip, [image], [whole], text_d)[0] == pytest.approx(0.0, abs=1e-6)
    # a ROI and its half-rolled twin swap roles: the evidence changes sign
    roi = np.zeros((64, 64), bool)
    roi[:32, :32] = True
    twin = np.roll(roi, (32, 32), axis=(0, 1))
    a, b = deletion_evidence(clip, [image, image], [roi, twin], text_d)
    assert a == pytest.approx(-b, abs=1e-5) and abs(a) > 0


def test_crop_contrast_whole_image_and_complement(clip):  # noqa: F811
    text_d = clip.model.encode_text(clip.tokenizer(["brain tumor"]))[0]
    text_d = text_d / text_d.norm()
    image = np.random.default_rng(1).random((64, 64)).astype(np.float32)
    whole, roi = np.ones((64, 64), bool), np.zeros((64, 64), bool)
    roi[8:40, 16:48] = True
    # the whole image against a black one: cos(text, image) - cos(text, black), each from the CLIP directly
    with torch.no_grad():
        emb = clip.model.encode_image(clip.preprocess([image, np.zeros_like(image)], torch.device("cpu")))
    cos = (emb / emb.norm(dim=-1, keepdim=True)) @ text_d
    (whole_score,) = crop_contrast(clip, [image], [whole], text_d)
    assert whole_score == pytest.approx(float(cos[0] - cos[1]), abs=1e-5)
    # a ROI and its complement swap inside and outside: the score changes sign (a swapped difference fails)
    a, b = crop_contrast(clip, [image, image], [roi, ~roi], text_d)
    assert a == pytest.approx(-b, abs=1e-5) and abs(a) > 0


def test_mean_pairwise_iou_hand_values():
    a, b, c = (np.zeros((4, 4), bool) for _ in range(3))
    a[:2, :2] = True  # 4 px
    b[:2, :] = True  # 8 px, holds a: IoU(a, b) = 4 / 8
    c[2:, 2:] = True  # 4 px, disjoint from a and b: IoU 0
    empty = np.zeros((4, 4), bool)
    # per image (the second image: a with itself, and two empty ROIs, which agree)
    out = mean_pairwise_iou([[a, empty], [b, empty], [c, empty]])
    np.testing.assert_allclose(out, [(0.5 + 0.0 + 0.0) / 3, 1.0])
    np.testing.assert_allclose(mean_pairwise_iou([[a, b], [a, c]]), [1.0, 0.0])
    assert np.isnan(mean_pairwise_iou([[a]])).all()  # one variant: no pair
    # each variant against the others: a with b (0.5) and c (0); b with a (0.5) and c (0); c with both 0
    np.testing.assert_allclose([iou_with_others([[a], [b], [c]], j)[0] for j in range(3)], [0.25, 0.25, 0.0])
    assert np.isnan(iou_with_others([[a]], 0)).all()


def test_prompt_agreement_rows_compare_each_prompt_with_the_others(standins, tmp_path):  # noqa: F811
    """Each prompt's row = mean over images of its ROI's IoU with each other prompt's (ROIs from `Tuner.rois`)."""
    corpus = tmp_path / "corpus"
    write_sample_corpus(corpus, 3, 5, size=64)
    raw = {k: v for k, v in standins.items() if k != "path"}
    prompts = ["brain tumor", "lung", "a photo of a cat"]
    raw["refine"] = {**raw.get("refine", {}), "threshold": 0.6, "use_sam": False}  # ROIs that differ by prompt
    raw["prompts"] = {"combine": "union", "modalities": {"MR": {"prompts": prompts}, "default": {"prompts": ["x"]}}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    tuner = Tuner(LocalizeConfig.load(path), corpus, per_modality=3)
    point = {"layer": 3, "beta": 0.1}
    grid = {"layer": [point["layer"]], "beta": [point["beta"]], "threshold": [tuner.config.refine.threshold]}
    table = tuner.grid_rows(grid, None, progress=False, criteria=("prompt_agreement",))
    rois = {p: tuner.rois("MR", p, {**tuner.config.saliency, **point}) for p in prompts}

    def iou(a, b):
        return (a & b).sum() / (a | b).sum() if (a | b).any() else 1.0

    for p in prompts:
        expected = np.mean([np.mean([iou(r, s) for s in (rois[q][i] for q in prompts if q != p)])
                            for i, r in enumerate(rois[p])])  # fmt: skip
        (got,) = table[(table.modality == "MR") & (table.prompt == p)].prompt_agreement
        assert got == pytest.approx(expected, abs=1e-9), (p, got, expected)
    print({p: float(table[table.prompt == p].prompt_agreement.item()) for p in prompts})
    assert table[table.modality != "MR"].prompt_agreement.isna().all()  # one prompt: nothing to agree with


def test_choose_takes_each_modality_best_prompt_then_the_best_triple():
    rows = []
    for layer in (1, 2):
        for modality, prompts in (("MR", ("p", "q")), ("CT", ("r",))):
            for prompt in prompts:
                score = {"p": 0.1, "q": 0.5, "r": 0.2}[prompt] + (0.3 if layer == 2 else 0.0)
                rows.append({"modality": modality, "prompt": prompt, "layer": layer, "beta": 0.1, "threshold": 0.3,
                             "evidence": score})  # fmt: skip
    choice = choose(pd.DataFrame(rows), "evidence")
    assert choice["layer"] == 2 and choice["prompts"] == {"MR": "q", "CT": "r"}
    assert choice["evidence"] == pytest.approx(((0.5 + 0.3) + (0.2 + 0.3)) / 2)


def test_tune_writes_a_config_localize_takes(standins, tmp_path):  # noqa: F811
    corpus = tmp_path / "corpus"
    write_sample_corpus(corpus, 3, 5, size=64)
    out = tmp_path / "tuned" / "tuned.yaml"  # another folder than the input config's: its paths must follow
    out.parent.mkdir()
    argv = ["--corpus", str(corpus), "--config", str(standins["path"]), "--out", str(out), "--per-modality", "2"]
    assert tune_main([*argv, "--layers", "2", "3", "--betas", "0.1", "--thresholds", "0.3", "0.5"]) == 0
    # No machine's folders in the written file, and its relative model paths lead to the stand-ins' own files.
    written = out.read_text()
    assert str(tmp_path.parent) not in written and str(standins["path"].parent) not in written
    config = LocalizeConfig.load(out)
    assert Path(config.clip.removeprefix("local-dir:")).resolve() == Path(standins["clip"].removeprefix("local-dir:"))
    assert Path(config.sam["checkpoint"]).resolve() == Path(standins["sam"]["checkpoint"]).resolve()
    assert config.saliency["layer"] in (2, 3) and config.refine.threshold in (0.3, 0.5)
    assert all(len(config.prompts["modalities"][m]["prompts"]) == 1 for m in ("MR", "CT", "XR"))
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert set(report["spearman_with_dice"][report["criterion"]]) == {"MR", "CT", "XR", "all"}  # Dice beside it
    assert len(pd.read_csv(out.with_suffix(".grid.csv"))) == 2 * 2 * (3 + 2 + 2)  # layers x thresholds x prompts


def test_prompt_report_identical_prompts_agree(standins, tmp_path):  # noqa: F811
    corpus = tmp_path / "corpus"
    write_sample_corpus(corpus, 3, 5, size=64)
    raw = {k: v for k, v in standins.items() if k != "path"}
    raw["prompts"] = {"combine": "union", "modalities": {"MR": {"prompts": ["brain tumor", "brain tumor!"]},
                                                         "default": {"prompts": ["lesion"]}}}  # fmt: skip
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    report = prompt_agreement(Tuner(LocalizeConfig.load(path), corpus, per_modality=2))
    assert set(report) == {"MR", "CT", "XR"} and report["CT"]["pairwise_iou"] == []
    (pair,) = report["MR"]["pairwise_iou"]
    assert 0.0 <= pair["iou"] <= 1.0 and set(report["MR"]["roi_area"]) == {"brain tumor", "brain tumor!"}
