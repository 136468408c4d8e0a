"""Dice / IoU of cached ROIs against ground truth, on hand-made non-square masks with known overlaps."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from data.ids import make_item_id
from data.roi_cache import RoiCache
from localize.__main__ import main
from localize.evaluate import dice_iou

H, W = 12, 20


def block(rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    mask[rows, cols] = 1
    return mask


def test_dice_and_iou_of_known_overlaps():
    pred = block(slice(2, 4), slice(5, 8))  # 2 x 3 = 6 px
    truth = block(slice(2, 5), slice(6, 9))  # 3 x 3 = 9 px; overlap rows 2-3, columns 6-7: 4 px
    dice, iou = dice_iou(pred, truth)
    assert dice == pytest.approx(2 * 4 / (6 + 9)) and iou == pytest.approx(4 / (6 + 9 - 4))
    assert dice_iou(truth, truth) == (1.0, 1.0)
    assert dice_iou(np.zeros((H, W)), truth) == (0.0, 0.0)
    assert dice_iou(np.zeros((H, W)), np.zeros((H, W))) == (1.0, 1.0)  # both empty: a perfect match


def test_eval_command_reports_the_mean_dice_per_image(tmp_path, capsys):
    paths = ["a.png", "b.png", "c.png"]
    manifest = pd.DataFrame(
        {"item_id": [make_item_id(p, 0) for p in paths], "path": paths, "frame": 0, "modality": ["XR", "XR", "CT"]}
    ).assign(height=H, width=W)
    cache = RoiCache.create(tmp_path / "c.zarr", manifest, {"test": 1}, mask_size=32)
    preds = [block(slice(2, 4), slice(5, 8)), block(slice(0, 6), slice(0, 10)), block(slice(7, 12), slice(15, 20))]
    truths = [block(slice(2, 5), slice(6, 9)), block(slice(0, 6), slice(0, 10)), block(slice(0, 3), slice(0, 3))]
    cache.write(range(3), preds, [p.astype(np.float32) for p in preds], [np.zeros((0, 4))] * 3, [1.0] * 3)
    (tmp_path / "truth").mkdir()
    for item_id, truth in zip(manifest.item_id, truths, strict=True):
        cv2.imwrite(str(tmp_path / "truth" / f"{item_id}.png"), truth * 255)

    code = main(["eval", "--cache", str(tmp_path / "c.zarr"), "--truth", str(tmp_path / "truth")])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    # per image: 8/15 (partial overlap), 1 (identical), 0 (disjoint); the mean of the three, not a pooled Dice
    assert summary["overall"]["dice_mean"] == pytest.approx((8 / 15 + 1 + 0) / 3)
    assert summary["per_modality"]["XR"]["dice_mean"] == pytest.approx((8 / 15 + 1) / 2)
    assert summary["per_modality"]["CT"]["dice_mean"] == 0.0 and summary["evaluated"] == 3
