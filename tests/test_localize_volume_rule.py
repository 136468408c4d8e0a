"""The volume-aware rule (localize.volume) on hand-made series: consistency over ±k slices, presence, and the series
pass over a cache whose series straddle work units (shards). Expected masks are drawn by hand, not computed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.roi_cache import FLAG_SERIES_PASS, RoiCache
from localize.config import ConfigError, LocalizeConfig
from localize.job import plan_units, summarize
from localize.volume import VolumeConfig, absent_slices, consistent_masks, series_pass, volume_rule

H = W = 32


def blob(rows: slice, cols: slice) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[rows, cols] = True
    return m


A = blob(slice(2, 10), slice(2, 10))  # the organ: on consecutive slices
B = blob(slice(20, 26), slice(20, 26))  # a spurious component
C = blob(slice(2, 8), slice(22, 30))  # a component on slices 0 and 2 (one slice apart)
D = blob(slice(14, 18), slice(2, 6))  # a small structure on slices 3 and 4 only (a shard boundary below)


def series_masks() -> np.ndarray:
    masks = np.zeros((7, H, W), dtype=bool)
    for z in (1, 2, 3, 4, 5):
        masks[z] |= A
    masks[3] |= B  # isolated: slice 3 only
    masks[3] |= D
    masks[4] |= D
    masks[0] |= C
    masks[2] |= C
    return masks


def test_isolated_component_dropped_consecutive_kept():
    out = consistent_masks(series_masks(), np.arange(7), k=1)
    for z in (1, 2, 3, 4, 5):
        assert (out[z] & A).sum() == A.sum(), f"slice {z}: the organ on consecutive slices must stay"
    assert not (out[3] & B).any(), "a component on one isolated slice must be dropped"
    # C on slices 0 and 2: two positions apart, so with k=1 neither has support
    assert not out[0].any() and not (out[2] & C).any()
    assert not out[6].any()
    assert (out[3] & D).sum() == D.sum() and (out[4] & D).sum() == D.sum(), "on 2 consecutive slices: kept"


def test_window_reaches_exactly_k_slices():
    masks = series_masks()
    out2 = consistent_masks(masks, np.arange(7), k=2)
    assert (out2[0] & C).sum() == C.sum() and (out2[2] & C).sum() == C.sum(), "C is within ±2 slices of itself"
    assert not (out2[3] & B).any()
    three_apart = np.zeros((4, H, W), dtype=bool)
    three_apart[0] = three_apart[3] = C
    assert not consistent_masks(three_apart, np.arange(4), k=2).any(), "slices 3 apart are outside ±2"
    assert consistent_masks(three_apart, np.arange(4), k=3).sum() == 2 * C.sum()


def test_neighbours_by_slice_index_not_by_row_order():
    masks = series_masks()
    order = np.array([4, 0, 6, 2, 5, 1, 3])  # rows shuffled; slice_index says where each sits
    out = consistent_masks(masks[order], order, k=1)
    expected = consistent_masks(masks, np.arange(7), k=1)
    np.testing.assert_array_equal(out, expected[order])


def test_single_image_series_is_left_alone():
    one = A[None] | B[None]
    np.testing.assert_array_equal(consistent_masks(one, np.array([0]), k=1), one)
    assert not absent_slices(np.array([0.1]), VolumeConfig(mode="series")).any()


def test_presence_marks_organ_free_end_slices_absent():
    # similarity rises where the organ is (slices 2..4) and falls at both ends
    presence = np.array([0.10, 0.12, 0.30, 0.32, 0.31, 0.11, 0.10])
    config = VolumeConfig(mode="series", presence_threshold=0.5)
    np.testing.assert_array_equal(absent_slices(presence, config), [True, True, False, False, False, True, True])
    # a flat series (organ everywhere, or nowhere contrasted): nothing absent
    flat = np.array([0.30, 0.305, 0.31, 0.30])
    assert not absent_slices(flat, config).any()
    # NaN (a blank slice) is never absent and does not set the range
    with_nan = np.array([np.nan, 0.10, 0.30, np.nan])
    np.testing.assert_array_equal(absent_slices(with_nan, config), [False, True, False, False])


def test_volume_rule_empties_absent_slices_then_checks_consistency():
    masks = np.stack([A, A, A, A])
    presence = np.array([0.1, 0.3, 0.3, 0.1])
    out, absent = volume_rule(masks, presence, np.arange(4), VolumeConfig(mode="series", consistency_k=1))
    np.testing.assert_array_equal(absent, [True, False, False, True])
    assert not out[0].any() and not out[3].any()
    assert out[1].sum() == A.sum() and out[2].sum() == A.sum()


def test_config_option_and_provenance():
    config = LocalizeConfig.load(None, ["refine.use_sam=false", "volume={mode: series, consistency_k: 2}"])
    assert config.volume == VolumeConfig(mode="series", consistency_k=2)
    assert LocalizeConfig.load(None, ["refine.use_sam=false"]).volume.mode == "slice"  # the release by default
    with pytest.raises(ConfigError, match="volume mode"):
        LocalizeConfig.load(None, ["refine.use_sam=false", "volume.mode=3d"])


def _series_manifest(n_per_series: int) -> pd.DataFrame:
    rows = []
    for s, key in enumerate(("s0", "s1")):
        for z in range(n_per_series):
            rows.append(
                {
                    "item_id": f"i{s}{z}",
                    "path": f"vol{s}.nii.gz",
                    "frame": z,
                    "modality": "CT",
                    "height": H,
                    "width": W,
                    "patient_key": f"p{s}",
                    "study_key": f"t{s}",
                    "series_key": key,
                    "slice_index": z,
                    "n_slices": n_per_series,
                }
            )
    return pd.DataFrame(rows)


def test_series_split_across_units_sees_its_neighbours(tmp_path: Path):
    # 2 series of 7 slices, 4 items per shard: series 0 = items 0..6 spans shards 0 and 1, series 1 = 7..13
    # spans shards 1, 2 and 3. Each shard is written separately, as its own work unit would be.
    manifest = _series_manifest(7)
    cache = RoiCache.create(tmp_path / "c.zarr", manifest, {"test": 1}, mask_size=H, shard_items=4)
    assert len(plan_units(cache, 2)) == 4
    masks = np.concatenate([series_masks(), series_masks()[::-1]])
    presence = np.concatenate([[0.1, 0.3, 0.3, 0.3, 0.3, 0.3, 0.1]] * 2)
    for shard in cache.shards():
        idx = list(shard)
        cache.write(
            idx,
            masks[idx].astype(np.uint8),
            [m.astype(np.float32) for m in masks[idx]],
            [np.zeros((0, 4))] * len(idx),
            [1.0] * len(idx),
            [0] * len(idx),
            None,
            presence[idx],
        )
        if shard.start == 4:  # series 0 finished at shard 1, series 1 not yet: only series 0 may be passed
            assert series_pass(cache, VolumeConfig(mode="series"))["series"] == 1
    counts = series_pass(cache, VolumeConfig(mode="series", consistency_k=1))
    assert counts["series"] == 1  # series 1, now complete; series 0 is not passed twice
    cache = RoiCache.open(cache.path)  # a reader opened after the writes
    table = cache.table()
    assert table.series_pass.all()
    for s in range(2):
        got = np.stack([cache.read_mask(7 * s + z).astype(bool) for z in range(7)])
        if s == 1:
            got = got[::-1]
        # ends absent; slices 1..5 keep the organ; B (slice 3, isolated) dropped; C only at 0 (absent) and 2
        assert not got[0].any() and not got[6].any()
        for z in (1, 2, 3, 4, 5):
            assert (got[z] & A).sum() == A.sum()
        assert not (got[3] & B).any() and not (got[2] & C).any()
        # in series 0, D's slices 3 and 4 are items 3 and 4, in shards 0 and 1: kept only if the pass sees both
        assert (got[3] & D).sum() == D.sum() and (got[4] & D).sum() == D.sum()
    absent = table.absent.to_numpy()
    np.testing.assert_array_equal(absent, [True] + [False] * 5 + [True] + [True] + [False] * 5 + [True])
    assert (cache._group["flags"][:] & FLAG_SERIES_PASS).all()
    summary = summarize(cache, 0, 0.0)
    assert summary.absent == 4 and "4 of them absent" in summary.line()
    assert table.empty_roi.sum() == 4
    # `localize inspect`'s statistics count them
    from localize.viewer.stats import cache_statistics

    stats = cache_statistics(cache, table, pd.Series(np.zeros(len(table)), index=table.index))
    assert stats["absent"] == 4 and stats["per_modality"]["CT"]["absent"] == 4
    assert stats["presence"]["min"] == pytest.approx(0.1) and stats["presence"]["max"] == pytest.approx(0.3)


@pytest.mark.slow
def test_run_with_the_series_rule_equals_the_rule_over_the_per_slice_run(tmp_path: Path):
    # The small stand-in models on a corpus with a 10-slice volume; 8-item shards split it across units.
    from localize.driver import run_localization
    from localize.standins import write_standins
    from tests.packed_fixtures import write_mixed_corpus

    standins = write_standins(tmp_path / "standins")
    corpus = write_mixed_corpus(tmp_path / "corpus", volumes=1, slices=10)
    settings = ["saliency={method: similarity}", "batch_size=4", "geometry.shard_items=8"]
    per_slice = LocalizeConfig.load(standins, settings)
    series = LocalizeConfig.load(standins, [*settings, "volume={mode: series, presence_threshold: 0.3}"])
    run_localization(per_slice, corpus, tmp_path / "slice.zarr", workers=0, progress=False)
    summary = run_localization(series, corpus, tmp_path / "series.zarr", workers=0, progress=False)
    a, b = RoiCache.open(tmp_path / "slice.zarr"), RoiCache.open(tmp_path / "series.zarr")
    assert "volume" not in a.provenance and b.provenance["volume"]["mode"] == "series"
    tb = b.table()
    assert tb.series_pass.all() and np.isfinite(tb.presence).sum() > 0 and a.table().presence.isna().all()
    assert summary.absent == int(tb.absent.sum())
    s = b.mask_size
    for _key, rows in tb.groupby("series_key"):
        idx = rows.index.to_numpy()
        masks = np.stack([a.read_mask(int(i), (s, s)).astype(bool) for i in idx])
        expected, absent = volume_rule(masks, rows.presence.to_numpy(), rows.slice_index.to_numpy(), series.volume)
        got = np.stack([b.read_mask(int(i), (s, s)).astype(bool) for i in idx])
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(rows.absent.to_numpy(), absent)
        if len(idx) == 1:  # the PNGs and 2-D files: one image per series, left as the per-slice rule gave it
            np.testing.assert_array_equal(got, masks)


def _report_case() -> tuple[np.ndarray, np.ndarray]:
    half = A.copy()
    half[6:10] = False  # rows 2..5 of A's 2..9: half of A
    truth = np.stack([np.zeros_like(A), A, A, A, np.zeros_like(A)])
    pred = np.stack([B, A, half, np.zeros_like(A), np.zeros_like(A)])
    return pred, truth


def test_series_scores_by_hand():
    from localize.volume_report import series_scores

    pred, truth = _report_case()
    order = np.array([3, 0, 4, 1, 2])  # rows shuffled; slice_index gives the order
    got = series_scores(pred[order], truth[order], order)
    # Dice on target slices 1, 2, 3: 1, 2*(A/2)/(A + A/2) = 2/3, 0; organ-free 0 and 4: one with a ROI;
    # consecutive IoU over pairs with a ROI: (0,1) B vs A = 0, (1,2) A vs A/2 = 1/2, (2,3) = 0; (3,4) both empty
    assert got["target_slices"] == 3 and got["slices"] == 5
    assert got["dice_target"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert got["false_roi_rate"] == pytest.approx(0.5)
    assert got["consecutive_iou"] == pytest.approx(0.5 / 3)


def test_volume_report_reads_truth_per_series(tmp_path: Path):
    import cv2

    from localize.volume_report import volume_report

    pred, truth = _report_case()
    manifest = _series_manifest(5)
    cache = RoiCache.create(tmp_path / "c.zarr", manifest, {"test": 1}, mask_size=H, shard_items=4)
    masks = np.concatenate([pred, truth])  # series 0: the hand case; series 1: perfect
    n = len(manifest)
    cache.write(
        list(range(n)), masks.astype(np.uint8), [m.astype(np.float32) for m in masks], [np.zeros((0, 4))] * n, [1.0] * n
    )
    (tmp_path / "truth").mkdir()
    for i, t in enumerate(np.concatenate([truth, truth])):
        cv2.imwrite(str(tmp_path / "truth" / f"{manifest.item_id[i]}.png"), t.astype(np.uint8) * 255)
    report = volume_report(RoiCache.open(cache.path), tmp_path / "truth")
    assert report["series"] == 2 and report["rule"].startswith("slice")
    means = report["mean_over_series"]
    assert means["dice_target"] == pytest.approx(((1 + 2 / 3) / 3 + 1) / 2)
    assert means["false_roi_rate"] == pytest.approx(0.25)
    # series 1 (-, A, A, A, -): IoU 0, 1, 1, 0 at its pairs
    assert means["consecutive_iou"] == pytest.approx((0.5 / 3 + 0.5) / 2)
