"""The empty-ROI flag comes from the final ROI, not from the coarse map (issue 30, weak spot c).

SAM's `mask_threshold` set above any logit makes refinement empty every ROI that the coarse map had (it had boxes),
so a flag taken from the coarse stage (or from the boxes) reads "not empty" and fails here. The job's flags are
checked item by item with a blank image in the middle of a batch of non-square images, so flags written in
another order fail too.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from data.manifest import scan_corpus
from data.roi_cache import RoiCache
from localize.components import binarise, largest_components, prompt_boxes
from localize.config import LocalizeConfig
from localize.job import plan_units, process_unit
from localize.localizer import Localizer
from localize.models import load_sam
from localize.refine import RefineConfig, refine_batch

pytest_plugins = ["tests.localize_fixtures"]  # fixtures: standins, clip, clip_dir, sam

UNREACHABLE = 1e9  # above any SAM logit: SAM's masks are empty


def test_refinement_that_empties_a_coarse_roi_flags_it_empty(standins):
    sam = load_sam(standins["sam"])
    saliency = np.zeros((40, 56), np.float32)
    saliency[4:12, 5:20] = 0.9
    saliency[25:36, 30:50] = 0.6
    image = np.random.default_rng(0).random((40, 56)).astype(np.float32)
    coarse = largest_components(binarise(saliency, 0.3), 2)
    assert coarse.sum() == 8 * 15 + 11 * 20 and len(prompt_boxes(coarse)) == 2  # the coarse stage has a ROI

    without_sam = refine_batch([saliency], [image], None, RefineConfig(use_sam=False))[0]
    assert not without_sam.empty and without_sam.roi_hw.sum() == coarse.sum() and without_sam.score > 0.6

    sam.mask_threshold = UNREACHABLE
    emptied = refine_batch([saliency], [image], sam, RefineConfig())[0]
    assert len(emptied.boxes_k4) == 2  # SAM was asked ...
    assert not emptied.roi_hw.any() and emptied.roi_hw.shape == (40, 56)  # ... and returned nothing
    assert emptied.empty and emptied.score == 0.0 and emptied.rects_k4.shape[0] == 0
    assert np.isfinite(emptied.sam_iou)  # SAM did run: its IoU is not the no-box NaN

    sam.mask_threshold = 0.0  # the stand-in's masks at its own threshold: the same coarse ROI is kept
    kept = refine_batch([saliency], [image], sam, RefineConfig())[0]
    assert kept.roi_hw.any() and not kept.empty and kept.score > 0.0


@pytest.fixture
def batch_corpus(tmp_path):
    """Four non-square noise images with a blank one second in file order (it alone has no coarse ROI)."""
    folder = tmp_path / "corpus" / "xray"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(5)
    for k in range(4):
        pixels = np.full((40, 56), 128, np.uint8) if k == 1 else (rng.random((40, 56)) * 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"img_{k}.png"), pixels)
    manifest, _ = scan_corpus(tmp_path / "corpus", progress=False)
    assert list(manifest.path) == [f"xray/img_{k}.png" for k in range(4)]
    return tmp_path / "corpus", manifest


def localize_into_cache(path, corpus, manifest, localizer) -> RoiCache:
    cache = RoiCache.create(path, manifest, {"test": "empty flag"}, mask_size=64)
    (unit,) = plan_units(cache, batch_size=4)
    counts = process_unit(unit, localizer, cache, corpus, manifest)
    assert counts["done"] == 4 and counts["failed"] == 0
    return cache


def test_the_job_flags_items_by_their_final_roi(tmp_path, standins, batch_corpus):
    corpus, manifest = batch_corpus
    config = LocalizeConfig.load(standins["path"], ["saliency={method: similarity}", "batch_size=4"])
    localizer = Localizer.from_config(config)

    kept = localize_into_cache(tmp_path / "kept.zarr", corpus, manifest, localizer)
    boxes = [len(kept.read_boxes(i)) for i in range(4)]
    assert boxes[1] == 0 and all(boxes[i] > 0 for i in (0, 2, 3))  # only the blank image has no coarse ROI
    masks = [int(kept.read_mask(i).sum()) for i in range(4)]
    assert masks[1] == 0 and all(masks[i] > 0 for i in (0, 2, 3))
    assert [kept.read_record(i)["empty_roi"] for i in range(4)] == [False, True, False, False]
    assert kept.summary()["empty_roi"] == 1

    localizer.sam.mask_threshold = UNREACHABLE
    emptied = localize_into_cache(tmp_path / "emptied.zarr", corpus, manifest, localizer)
    assert [len(emptied.read_boxes(i)) for i in range(4)] == boxes  # the same coarse stage ...
    assert all(emptied.read_mask(i).sum() == 0 for i in range(4))  # ... every ROI emptied by refinement
    assert [emptied.read_record(i)["empty_roi"] for i in range(4)] == [True] * 4
    assert emptied.table()["empty_roi"].tolist() == [True] * 4 and emptied.summary()["empty_roi"] == 4
    assert all(emptied.read_record(i)["score"] == 0.0 for i in range(4))
