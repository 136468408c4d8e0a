"""The small models localize what the prompts name on a sample corpus they were not trained on.

`localize run` + `localize eval` (the library calls the commands make) on a corpus drawn with seed 7 (the models
trained on seed 1000's): Dice must reach the figures docs/MODELS.md states, per modality well above the untrained
stand-ins and above a shuffled-ROI control (each item gets another item's ROI of the same modality), so a right
mask for the wrong image does not pass. A sign error in M2IB's objective or SAM boxes with x and y swapped fail it.
"""

from __future__ import annotations

import pytest

from data.roi_cache import RoiCache
from data.sample import write_sample_corpus
from localize.config import LocalizeConfig
from localize.driver import run_localization
from localize.evaluate import evaluate_cache
from localize.import_masks import shuffle_rois
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
    assert small["overall"] >= 0.5, report
    for modality in ("MR", "CT", "XR"):
        assert small[modality] >= standin[modality] + 0.15, report
        assert small[modality] >= shuffled[modality] + 0.05, report
    assert RoiCache.open(tmp_path / "small.zarr").provenance["models_label"].startswith("small models trained")
