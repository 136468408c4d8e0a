"""The metric wiring of every fine-tuning task: planted perfect predictions score 1, planted wrong ones less;
COCO evaluation agrees with hand-computed AP on trivial cases."""

from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch

from finetune.classify import classification_metrics
from finetune.coco_eval import coco_evaluate, predictions_to_coco
from finetune.data import load_coco
from finetune.segment import segmentation_metrics, soft_dice_loss


def _scores(metrics, preds, target) -> dict[str, float]:
    metrics.reset()
    metrics.update(preds, target)
    return {k: float(v) for k, v in metrics.compute().items()}


def test_classification_metrics_perfect_and_wrong():
    target = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    perfect = torch.nn.functional.one_hot(target, 3).float() * 0.8 + 0.2 / 3
    metrics = classification_metrics(3)
    assert _scores(metrics, perfect, target) == pytest.approx({"accuracy": 1, "auroc": 1, "auprc": 1, "f1": 1})

    wrong = perfect.roll(1, dims=1)  # every example's top score moves to the next class
    scores = _scores(metrics, wrong, target)
    assert set(scores) == {"accuracy", "auroc", "auprc", "f1"}
    assert scores["accuracy"] == 0 and scores["f1"] == 0
    assert scores["auroc"] < 1 and scores["auprc"] < 1

    one_error = perfect.clone()
    one_error[0] = perfect[0].roll(1)  # first example (class 0) predicted as class 1
    scores = _scores(metrics, one_error, target)
    assert scores["accuracy"] == pytest.approx(6 / 7)
    assert 0 < scores["f1"] < 1 and scores["auroc"] < 1


def test_segmentation_metrics_perfect_and_wrong():
    target = torch.zeros(3, 16, 16, dtype=torch.long)
    target[0, 2:8, 2:8] = 1
    target[1, 10:14, 4:12] = 1  # image 2 has no foreground at all
    metrics = segmentation_metrics(2)
    assert _scores(metrics, target.clone(), target) == pytest.approx({"dice": 1, "iou": 1})

    half = target.clone()
    half[0, 2:8, 2:5] = 0  # half of the first object (36 px) missed: Dice over the split = 2*50 / (50 + 68)
    scores = _scores(metrics, half, target)
    assert scores["dice"] == pytest.approx(2 * 50 / (50 + 68), rel=1e-5)
    assert scores["iou"] < 1
    assert _scores(metrics, 1 - target, target)["dice"] == 0


def test_soft_dice_loss_is_zero_only_for_confident_perfect_logits():
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, 2:6, 2:6] = 1
    logits = torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).float() * 40
    assert float(soft_dice_loss(logits, target)) < 1e-3
    assert float(soft_dice_loss(-logits, target)) > 0.9


def _coco_gt(tmp_path, boxes_xywh):
    """One 32x32 image with one box-shaped instance (polygon) per box; category 7."""
    anns = []
    for k, (x, y, w, h) in enumerate(boxes_xywh, start=1):
        polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
        anns.append(
            {
                "id": k,
                "image_id": 1,
                "category_id": 7,
                "bbox": [x, y, w, h],
                "area": w * h,
                "iscrowd": 0,
                "segmentation": [polygon],
            }
        )
    dataset = {
        "images": [{"id": 1, "file_name": "a.png", "height": 32, "width": 32}],
        "annotations": anns,
        "categories": [{"id": 7, "name": "lesion"}],
    }
    path = tmp_path / "gt.json"
    path.write_text(__import__("json").dumps(dataset))
    return load_coco(path)


def _box_mask(x, y, w, h, size=32):
    mask = np.zeros((size, size), np.uint8)
    mask[y : y + h, x : x + w] = 1
    return mask


def _result(x, y, w, h, score):
    rle = mask_utils.encode(np.asfortranarray(_box_mask(x, y, w, h)))
    return {"image_id": 1, "category_id": 7, "score": score, "bbox": [x, y, w, h], "segmentation": rle}


def test_coco_ap_perfect_is_one_and_matches_hand_computed_cases(tmp_path):
    gt = _coco_gt(tmp_path, [(2, 2, 10, 10), (18, 18, 10, 10)])
    perfect = coco_evaluate(gt, [_result(2, 2, 10, 10, 0.9), _result(18, 18, 10, 10, 0.8)])
    assert perfect == pytest.approx({f"{t}_ap{s}": 1.0 for t in ("box", "mask") for s in ("", "50", "75")})

    # One exact hit (score 0.9), one false positive (0.8), one object missed. Precision is 1 up to recall 0.5 and
    # the 101-point interpolated AP is 51/101 at every IoU threshold.
    half = coco_evaluate(gt, [_result(2, 2, 10, 10, 0.9), _result(20, 2, 8, 8, 0.8)])
    assert half == pytest.approx({k: 51 / 101 for k in perfect})

    # A single detection with IoU 0.64 counts at thresholds 0.50, 0.55, 0.60 only: AP = 3/10, AP50 = 1, AP75 = 0.
    gt1 = _coco_gt(tmp_path, [(0, 0, 10, 10)])
    shifted = coco_evaluate(
        gt1, [{"image_id": 1, "category_id": 7, "score": 0.5, "bbox": [0, 0, 10, 6.4]}], iou_types=("bbox",)
    )
    assert shifted == pytest.approx({"box_ap": 0.3, "box_ap50": 1.0, "box_ap75": 0.0})

    assert coco_evaluate(gt, [])["box_ap"] == 0.0  # nothing predicted where objects exist


def test_predictions_to_coco_maps_torchvision_outputs(tmp_path):
    gt = _coco_gt(tmp_path, [(2, 2, 10, 10), (18, 18, 10, 10)])
    masks = torch.stack([torch.from_numpy(_box_mask(2, 2, 10, 10)), torch.from_numpy(_box_mask(18, 18, 10, 10))])
    output = {
        "boxes": torch.tensor([[2.0, 2, 12, 12], [18, 18, 28, 28]]),
        "labels": torch.tensor([1, 1]),
        "scores": torch.tensor([0.9, 0.7]),
        "masks": masks[:, None].float() * 0.9,
    }
    results = predictions_to_coco([output], [1], category_ids=[7])
    assert [r["category_id"] for r in results] == [7, 7]
    assert results[0]["bbox"] == pytest.approx([2, 2, 10, 10])
    assert coco_evaluate(gt, results)["mask_ap"] == pytest.approx(1.0)

    halves = torch.zeros_like(masks)
    halves[0, 2:12, 2:7] = 1
    halves[1, 18:28, 18:23] = 1  # masks cover half of each object (IoU 0.5): counted at the 0.50 threshold only
    wrong = dict(output, masks=halves[:, None].float())
    metrics = coco_evaluate(gt, predictions_to_coco([wrong], [1], category_ids=[7]))
    assert metrics["box_ap"] == pytest.approx(1.0)
    assert metrics["mask_ap50"] == pytest.approx(1.0) and metrics["mask_ap"] == pytest.approx(0.1)
