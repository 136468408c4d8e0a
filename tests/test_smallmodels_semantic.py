"""The small models localize what the prompts name on a sample corpus they were not trained on.

`localize run` + `localize eval` (the library calls the commands make) on a corpus drawn with seed 7 (the models
trained on seed 1000's): Dice must reach the figures docs/MODELS.md states, per modality well above the untrained
stand-ins and above a shuffled-ROI control (each item gets another item's ROI of the same modality), so a right
mask for the wrong image does not pass. A sign error in M2IB's objective fails it (X-ray). The small CLIP's
saliency is coarse (on CT and MR its boxes nearly always cover the whole image, a square), so swapped box x / y
pass the first test (measured: 0.59 overall) and are checked where the boxes are exact: the refinement fed one
truth component as its saliency map."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from data.intensity import IntensityConfig
from data.masks import read_mask_image
from data.readers import load_image
from data.roi_cache import RoiCache
from data.sample import write_sample_corpus
from localize.config import LocalizeConfig, anchor_paths
from localize.driver import run_localization
from localize.evaluate import dice_iou, evaluate_cache
from localize.import_masks import shuffle_rois
from localize.refine import RefineConfig, refine_batch
from localize.sam_loader import load_sam
from localize.standins import write_standins
from tests.smallmodels_fixtures import small_models  # noqa: F401 - fixture

UNSEEN_SEED = 7


def _dice(config_path, corpus, cache) -> dict:
    run_localization(LocalizeConfig.load(config_path), corpus, cache, workers=0, progress=False)
    return _summary(cache, corpus)


def _summary(cache, corpus) -> dict:
    _, summary = evaluate_cache(RoiCache.open(cache), corpus / "truth")
    return {"overall": summary["overall"]["dice_mean"]} | {
        m: v["dice_mean"] for m, v in summary["per_modality"].items()
    }


@pytest.mark.slow
def test_small_models_find_lesions_and_lungs(small_models, tmp_path):  # noqa: F811 - fixture
    corpus = tmp_path / "corpus"
    write_sample_corpus(corpus, 12, UNSEEN_SEED)
    small = _dice(small_models, corpus, tmp_path / "small.zarr")
    standin = _dice(write_standins(tmp_path / "standins"), corpus, tmp_path / "standin.zarr")
    shuffle_rois(tmp_path / "small.zarr", tmp_path / "shuffled.zarr", seed=0, progress=False)
    shuffled = _summary(tmp_path / "shuffled.zarr", corpus)
    report = f"small {small}\nstand-ins {standin}\nshuffled {shuffled}"
    print(report)
    # Measured (docs/MODELS.md): small 0.58 overall (CT 0.66, MR 0.19, XR 0.90), stand-ins 0.23 (0.26, 0.02, 0.40),
    # shuffled 0.48 (0.54, 0.10, 0.81). With M2IB's objective's sign flipped: 0.57 (CT 0.84, MR 0.19, XR 0.67):
    # the X-ray floor fails (CT's lungs come out better from the inverted map: its "lungs" saliency is off target).
    assert small["overall"] >= 0.5, report
    for modality, floor in (("CT", 0.55), ("XR", 0.8), ("MR", 0.15)):
        assert small[modality] >= floor, report
    for modality, over_standin, over_shuffled in (("CT", 0.3, 0.05), ("XR", 0.3, 0.05), ("MR", 0.1, 0.05)):
        assert small[modality] >= standin[modality] + over_standin, report
        assert small[modality] >= shuffled[modality] + over_shuffled, report
    assert RoiCache.open(tmp_path / "small.zarr").provenance["models_label"].startswith("small models trained")


@pytest.mark.slow
def test_small_sam_segments_each_lung_from_its_box(small_models, tmp_path):  # noqa: F811 - fixture
    """The refinement (component -> box -> SAM) with one lung of the truth as saliency: the small SAM turns that
    lung's box into that lung, not the other one. Measured on seed 7: Dice 0.93 (CT), 0.93 (X-ray); with x and y
    of the boxes swapped, 0.66 (CT), so this fails."""
    corpus = tmp_path / "corpus"
    write_sample_corpus(corpus, 6, UNSEEN_SEED)
    sam = load_sam(anchor_paths(yaml.safe_load(small_models.read_text()), small_models.parent)["sam"])
    labels = pd.read_csv(corpus / "labels.csv")
    for modality in ("CT", "XR"):
        dice = []
        for row in labels[labels.modality == modality].itertuples():
            image = load_image(corpus, row.path, int(row.frame), modality, IntensityConfig())
            truth_hw = read_mask_image(corpus / "truth" / f"{row.item_id}.png").astype(np.uint8)
            count, lungs_hw = cv2.connectedComponents(truth_hw)
            for k in range(1, count):
                lung_hw = lungs_hw == k
                saliency = torch.from_numpy(lung_hw.astype(np.float32))
                (roi,) = refine_batch([saliency], [image], sam, RefineConfig(top_k=1))
                dice.append(dice_iou(roi.roi_hw, lung_hw)[0])
        assert np.mean(dice) >= 0.85, (modality, np.mean(dice))
