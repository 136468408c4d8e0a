"""`localize inspect --series KEY`: a series drawn as a strip of consecutive slices, in slice order, with ROIs and
presence scores. The cache is hand-made with its rows shuffled against the slice order."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from data.roi_cache import FLAG_ABSENT, FLAG_EMPTY_ROI, FLAG_SERIES_PASS, RoiCache
from localize.viewer import inspect_cache, main

H = W = 32
ROW_ORDER = [3, 0, 5, 1, 4, 2]  # manifest row r holds slice position ROW_ORDER[r]
KEY = "abc123" + "0" * 58


def roi_of(z: int) -> np.ndarray:
    """Slice z's ROI: a square that moves down the image as z grows (slices 0 and 5: absent, empty)."""
    m = np.zeros((H, W), bool)
    if 0 < z < 5:
        m[2 + 5 * z : 8 + 5 * z, 10:22] = True
    return m


def build_cache(tmp: Path) -> Path:
    rows = [
        {
            "item_id": f"item_{z}",
            "path": f"ct/slice_{r:03d}.dcm",
            "frame": 0,
            "modality": "CT",
            "height": H,
            "width": W,
            "patient_key": "p",
            "study_key": "t",
            "series_key": KEY,
            "slice_index": z,
            "n_slices": len(ROW_ORDER),
        }
        for r, z in enumerate(ROW_ORDER)
    ]
    other = {"item_id": "other", "path": "ct/other.dcm", "series_key": "abd999" + "0" * 58, "slice_index": 0}
    rows.append({**rows[0], **other})
    manifest = pd.DataFrame(rows)
    cache = RoiCache.create(tmp / "c.zarr", manifest, {"test": 1}, mask_size=H, shard_items=4)
    z_of = [*ROW_ORDER, 0]
    masks = np.stack([roi_of(z) for z in z_of])
    presence = [0.1 + 0.01 * z if 0 < z < 5 else 0.05 for z in z_of]
    flags = [FLAG_SERIES_PASS | (FLAG_ABSENT | FLAG_EMPTY_ROI if not m.any() else 0) for m in masks]
    n = len(manifest)
    cache.write(
        list(range(n)),
        masks.astype(np.uint8),
        [m.astype(np.float32) for m in masks],
        [np.zeros((0, 4))] * n,
        [1.0] * n,
        flags,
        None,
        presence,
    )
    return cache.path


def test_strip_draws_the_series_in_slice_order(tmp_path: Path):
    stats = inspect_cache(build_cache(tmp_path), tmp_path / "out", n=0, series=["abc"], progress=False)
    (strip,) = stats["strips"]
    assert strip["slice_index"] == [0, 1, 2, 3, 4, 5], "slice order, not the manifest's row order"
    assert strip["item_ids"] == [f"item_{z}" for z in range(6)]
    assert strip["absent"] == [True, False, False, False, False, True]
    assert strip["presence"] == pytest.approx([0.05, 0.11, 0.12, 0.13, 0.14, 0.05])
    page = (tmp_path / "out" / "index.html").read_text()
    assert strip["file"] in page and "0.130" in page
    # the PNG: tiles left to right; the ROI contour (cyan) of tile j sits lower as its slice position grows
    png = cv2.imread(str(tmp_path / "out" / strip["file"]))[:, :, ::-1].astype(int)  # RGB
    cyan = (png[:, :, 0] < 90) & (png[:, :, 1] > 170) & (png[:, :, 2] > 200)
    cols = np.flatnonzero(cyan.any(axis=0))
    groups = np.split(cols, np.flatnonzero(np.diff(cols) > 5) + 1)
    assert len(groups) == 4, "four slices have a ROI (positions 1..4); the absent ends have none"
    centres_y = [np.flatnonzero(cyan[:, g].any(axis=1)).mean() for g in groups]
    assert centres_y == sorted(centres_y) and centres_y[-1] - centres_y[0] > 10
    # the absent ends are tiles 0 and 5: the ROIs lie in the middle four of six equal columns
    width = png.shape[1]
    assert groups[0][0] > width / 6 * 0.9 and groups[-1][-1] < width * 5 / 6 * 1.05


def test_bad_series_keys_are_refused(tmp_path: Path, capsys):
    cache = build_cache(tmp_path)
    assert main(["--cache", str(cache), "--out", str(tmp_path / "o"), "--n", "0", "--series", "ab"]) == 2
    assert "matches 2 series" in capsys.readouterr().err
    assert main(["--cache", str(cache), "--out", str(tmp_path / "o"), "--n", "0", "--series", "zzz"]) == 2
    assert "matches no series" in capsys.readouterr().err
    assert main(["--cache", str(cache), "--out", str(tmp_path / "o"), "--series", "abc", "--slices", "3:1"]) == 2
    args = ["--cache", str(cache), "--out", str(tmp_path / "o"), "--n", "0", "--series", "abc", "--slices", "1:3"]
    assert main(args) == 0
    assert "1 series strips" in capsys.readouterr().out
