"""`replay_report` (the tuning grid of bench/volume_rule.py): the rule replayed offline over a per-slice cache gives
the figures of the cache the series pass writes, for each setting; and a setting that changes the masks changes them."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from data.roi_cache import RoiCache
from localize.volume import VolumeConfig, series_pass
from localize.volume_report import replay_report, volume_report

H = W = 32


def _case() -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """One 6-slice series (rows shuffled): organ on positions 1..4, a spurious blob on 0 and 3, presence low at ends."""
    order = [2, 5, 0, 3, 1, 4]
    organ = np.zeros((H, W), bool)
    organ[4:14, 4:14] = True
    blob = np.zeros((H, W), bool)
    blob[22:28, 22:28] = True
    masks, truth, presence = [], [], []
    for z in order:
        has = 0 < z < 5
        masks.append(organ | blob if z in (0, 3) else organ)
        truth.append(organ if has else np.zeros_like(organ))
        presence.append(0.3 if has else 0.1)
    manifest = pd.DataFrame(
        {
            "item_id": [f"i{z}" for z in order],
            "path": [f"s/{z}.dcm" for z in order],
            "frame": 0,
            "modality": "CT",
            "height": H,
            "width": W,
            "patient_key": "p",
            "study_key": "t",
            "series_key": "s0",
            "slice_index": order,
            "n_slices": 6,
        }
    )
    return manifest, np.stack(masks), np.stack(truth), np.array(presence)


def _write(path: Path, manifest: pd.DataFrame, masks: np.ndarray, presence: np.ndarray) -> RoiCache:
    cache = RoiCache.create(path, manifest, {"refine": {"threshold": 0.3, "top_k": 2}}, mask_size=H, shard_items=4)
    n = len(manifest)
    sal = [0.5 * m.astype(np.float32) for m in masks]
    cache.write(list(range(n)), masks.astype(np.uint8), sal, [np.zeros((0, 4))] * n, [1.0] * n, None, None, presence)
    return cache


@pytest.mark.parametrize(
    "config",
    [
        VolumeConfig(mode="series"),
        VolumeConfig(mode="series", presence_threshold=0.2, consistency_k=2),
        VolumeConfig(mode="series", consistency_k=0, z_smooth=True),
    ],
)
def test_replay_equals_the_series_pass(tmp_path: Path, config: VolumeConfig):
    manifest, masks, truth, presence = _case()
    (tmp_path / "truth").mkdir()
    for item_id, t in zip(manifest.item_id, truth, strict=True):
        cv2.imwrite(str(tmp_path / "truth" / f"{item_id}.png"), t.astype(np.uint8) * 255)
    per_slice = _write(tmp_path / "slice.zarr", manifest, masks, presence)
    passed = _write(tmp_path / "series.zarr", manifest, masks, presence)
    series_pass(passed, config)
    expected = volume_report(RoiCache.open(passed.path), tmp_path / "truth")["mean_over_series"]
    got = replay_report(RoiCache.open(per_slice.path), RoiCache.open(passed.path), tmp_path / "truth", config)
    assert got["mean_over_series"] == pytest.approx(expected)
    before = volume_report(RoiCache.open(per_slice.path), tmp_path / "truth")["mean_over_series"]
    assert before["false_roi_rate"] == 1.0 and expected["false_roi_rate"] == 0.0  # both ends absent in every setting


def test_bench_prints_both_rules_and_a_grid_whose_replay_matches_the_run(tmp_path: Path):
    import json
    import subprocess
    import sys

    from data.sample import write_sample_corpus
    from localize.standins import write_standins

    corpus = tmp_path / "volumes"
    write_sample_corpus(corpus, 12, 0, size=48, mode="volumes")
    config = write_standins(tmp_path / "standins")
    args = ["--corpus", str(corpus), "--config", str(config), "--work", str(tmp_path / "w"), "--grid"]
    args += ["--set", "saliency={method: similarity}", "--set", "refine.use_sam=false"]
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "bench/volume_rule.py", *args], cwd=repo, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert out["slice"]["series"] == 2 and set(out["slice"]["mean_by_modality"]) == {"CT", "MR"}
    assert out["series"]["rule"].startswith("series") and out["replay_matches_run"] is True
    assert len(out["grid"]) == 4 * 3 * 3 * 2 and set(out["best"]) == {"all", "CT", "MR"}
    # the per-slice rule gives every organ-free slice of these untrained models' run a ROI or not: a rate in [0, 1]
    assert 0.0 <= out["slice"]["mean_over_series"]["false_roi_rate"] <= 1.0
