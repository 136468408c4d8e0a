"""`python -m localize import`: masks from <item_id>.png files into a ROI cache, and the shuffled-ROI control."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from data.roi_cache import ProvenanceMismatch, RoiCache
from data.sample import write_sample_corpus
from localize.__main__ import main as localize_main
from localize.import_masks import derangement_within, import_masks, shuffle_rois

SIZE = 48
S = 256  # the cache's default mask size


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_sample_corpus(root, n=4, size=SIZE)
    return root


def _truth(corpus, item_id: str) -> np.ndarray:
    return (cv2.imread(str(corpus / "truth" / f"{item_id}.png"), cv2.IMREAD_GRAYSCALE) > 0).astype(np.uint8)


def test_import_round_trip_provenance_and_resume(corpus, tmp_path):
    cache_path = tmp_path / "gt.zarr"
    summary = import_masks(corpus / "truth", cache_path, corpus=corpus, progress=False)
    cache = RoiCache.open(cache_path)
    manifest = cache.manifest()
    assert summary.done == summary.items == len(manifest) == 12 and summary.failed == 0
    assert cache.provenance["source"] == "imported" and len(cache.provenance["masks"]) == 64
    table = cache.table()
    for i, item_id in enumerate(manifest.item_id):
        truth = _truth(corpus, item_id)
        # stored aspect-free at S x S (nearest): exact there; at the item's own size up to resampling at edges
        truth_ss = cv2.resize(truth, (S, S), interpolation=cv2.INTER_NEAREST_EXACT)
        np.testing.assert_array_equal(cache.read_mask(i, (S, S)), truth_ss)
        assert ((cache.read_saliency(i, (S, S)) > 0.5) == truth_ss.astype(bool)).mean() > 0.97  # bilinear
        # items no larger than S x S come back exactly (nearest-exact resizing both ways)
        np.testing.assert_array_equal(cache.read_mask(i), truth)
        assert table.empty_roi[i] == (not truth.any())
        boxes = cache.read_boxes(i)
        if truth.any():  # the largest component's box lies on the mask's bounding box
            ys, xs = np.nonzero(truth)
            assert boxes[:, 0].min() >= xs.min() - 0.5 and boxes[:, 2].max() <= xs.max() + 1.5
            assert boxes[:, 1].min() >= ys.min() - 0.5 and boxes[:, 3].max() <= ys.max() + 1.5
        else:
            assert len(boxes) == 0
    # a rerun has nothing to do; other mask files are refused (their digest differs)
    assert import_masks(corpus / "truth", cache_path, corpus=corpus, progress=False).processed == 0
    other = tmp_path / "other"
    other.mkdir()
    for path in (corpus / "truth").glob("*.png"):
        cv2.imwrite(str(other / path.name), np.zeros((SIZE, SIZE), np.uint8))
    with pytest.raises(ProvenanceMismatch, match="masks"):
        import_masks(other, cache_path, corpus=corpus, progress=False)


def test_missing_mask_file_is_a_recorded_failure(corpus, tmp_path, capsys):
    masks = tmp_path / "masks"
    masks.mkdir()
    files = sorted((corpus / "truth").glob("*.png"))
    for path in files[1:]:
        (masks / path.name).write_bytes(path.read_bytes())
    cache_path = tmp_path / "partial.zarr"
    code = localize_main(
        ["import", "--masks", str(masks), "--cache", str(cache_path), "--corpus", str(corpus), "--no-progress"]
    )
    assert code == 0 and "11/12 done" in capsys.readouterr().out
    table = RoiCache.open(cache_path).table()
    missing = table[table.status == "failed"]
    assert list(missing.item_id) == [files[0].stem]
    assert missing.reason.iloc[0] == f"no mask file {files[0].name}"
    # neither a mask source nor a corpus / manifest: a clear error, exit 2
    assert localize_main(["import", "--masks", str(masks), "--cache", str(tmp_path / "x.zarr")]) == 2
    assert "--corpus" in capsys.readouterr().err


def test_derangement_keeps_modality_and_never_maps_an_item_to_itself():
    groups = np.array(["MR"] * 7 + ["CT"] * 2 + ["XR"] * 5 + ["OT"])
    seen = set()
    for seed in range(50):
        donor = derangement_within(groups, np.random.default_rng(seed))
        assert donor[-1] == -1  # alone in its modality
        taken = donor[:-1]
        assert np.all(taken != np.arange(len(taken)))
        assert np.all(groups[taken] == groups[:-1])
        assert sorted(taken) == list(range(len(taken)))  # a permutation: every ROI used once
        seen.add(tuple(taken))
    assert len(seen) > 10  # seeded, not fixed
    np.testing.assert_array_equal(
        derangement_within(groups, np.random.default_rng(3)), derangement_within(groups, np.random.default_rng(3))
    )


def test_shuffled_cache_takes_another_items_roi_of_the_same_modality(corpus, tmp_path):
    source_path = tmp_path / "gt.zarr"
    import_masks(corpus / "truth", source_path, corpus=corpus, progress=False)
    shuffled_path = tmp_path / "shuffled.zarr"
    summary = shuffle_rois(source_path, shuffled_path, seed=5, progress=False)
    source, shuffled = RoiCache.open(source_path), RoiCache.open(shuffled_path)
    assert summary.done == 12 and summary.failed == 0
    assert shuffled.provenance["source"] == "shuffled" and shuffled.provenance["seed"] == 5
    assert shuffled.provenance["from"] == source.provenance
    manifest = source.manifest()
    moved = 0
    for i in range(len(manifest)):
        mask = shuffled.read_mask(i, (S, S))  # the stored array, copied from the donor as it is
        donors = [
            j
            for j in range(len(manifest))
            if j != i
            and manifest.modality[j] == manifest.modality[i]
            and np.array_equal(source.read_mask(j, (S, S)), mask)
        ]
        assert donors, f"item {i}: its shuffled ROI is no other item's ROI of modality {manifest.modality[i]}"
        moved += not np.array_equal(source.read_mask(i, (S, S)), mask)
    assert moved >= 6  # most ROIs really moved (equal ones are the empty ROIs of lesion-free MR slices)
    assert shuffle_rois(source_path, shuffled_path, seed=5, progress=False).processed == 0
    with pytest.raises(ProvenanceMismatch, match="seed"):
        shuffle_rois(source_path, shuffled_path, seed=6, progress=False)
