"""The metric wiring of every fine-tuning task: planted perfect predictions score 1, planted wrong ones less;
COCO evaluation agrees with hand-computed AP on trivial cases; Dice against hand computations."""

from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch

from finetune.classify import classification_metrics
from finetune.coco_eval import coco_evaluate, predictions_to_coco
from finetune.data import load_coco
from finetune.seg_metrics import SegmentationScores
from finetune.segment import soft_dice_loss


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


def _seg_scores(pairs, num_classes=2, empty_score=None) -> dict[str, float]:
    scores = SegmentationScores(num_classes, empty_score)
    for pred, truth in pairs:
        scores.update(pred, truth)
    return {k: float(v) for k, v in scores.compute().items()}


def test_dice_and_iou_of_one_image_match_a_hand_computation():
    truth = torch.zeros(12, 12, dtype=torch.long)
    truth[2:8, 2:8] = 1  # |T| = 36
    pred = torch.zeros_like(truth)
    pred[2:8, 5:9] = 1  # |P| = 24, |P∩T| = 18 (columns 5..7)
    scores = _seg_scores([(pred, truth)])
    assert scores["dice"] == pytest.approx(2 * 18 / (24 + 36))  # 0.6; without the factor 2 it would be 0.3
    assert scores["iou"] == pytest.approx(18 / (24 + 36 - 18))
    assert scores["dice_pooled"] == pytest.approx(0.6) and scores["n_images"] == 1
    assert _seg_scores([(truth, truth)])["dice"] == 1 and _seg_scores([(1 - truth, truth)])["dice"] == 0


def test_mean_dice_per_image_differs_from_pooled_dice_on_a_hand_made_pair():
    """A small lesion found exactly (Dice 1) and a large one half found (Dice 2/3): the medical mean per image is
    5/6; pooling the pixels of both images weighs the large lesion: 2 x 54 / (54 + 104)."""
    small_t = torch.zeros(10, 10, dtype=torch.long)
    small_t[0:2, 0:2] = 1  # 4 px, predicted exactly
    large_t = torch.zeros(20, 20, dtype=torch.long)
    large_t[0:10, 0:10] = 1  # 100 px
    large_p = torch.zeros_like(large_t)
    large_p[0:5, 0:10] = 1  # 50 px, all inside: Dice 100 / 150
    scores = _seg_scores([(small_t.clone(), small_t), (large_p, large_t)])
    assert scores["dice"] == pytest.approx((1 + 2 / 3) / 2)
    assert scores["dice_pooled"] == pytest.approx(2 * 54 / (54 + 104))
    assert scores["iou"] == pytest.approx((1 + 0.5) / 2) and scores["iou_pooled"] == pytest.approx(54 / 104)


def test_empty_images_are_skipped_unless_scored_and_false_positives_on_them_score_zero():
    empty = torch.zeros(8, 8, dtype=torch.long)
    hit = torch.zeros(8, 8, dtype=torch.long)
    hit[2:4, 2:4] = 1
    # nnU-Net: no truth and no prediction -> NaN, left out of the mean
    assert _seg_scores([(hit, hit), (empty, empty)])["dice"] == pytest.approx(1.0)
    assert _seg_scores([(hit, hit), (empty, empty)], empty_score=1.0)["dice"] == pytest.approx(1.0)
    assert _seg_scores([(hit, hit), (hit, empty)])["dice"] == pytest.approx(0.5)  # a false positive scores 0
    assert _seg_scores([(hit, empty), (empty, empty)], empty_score=1.0)["dice"] == pytest.approx(0.5)


def test_multi_class_dice_averages_each_class_over_images_then_the_classes():
    truth = torch.zeros(6, 6, dtype=torch.long)
    truth[0:2, 0:2] = 1  # class 1: 4 px
    truth[4:6, 4:6] = 2  # class 2: 4 px
    pred = truth.clone()
    pred[4:6, 4:5] = 0  # class 2: 2 of 4 px found -> Dice 4 / 6
    assert _seg_scores([(pred, truth)], num_classes=3)["dice"] == pytest.approx((1 + 4 / 6) / 2)
    only_one = torch.zeros_like(truth)
    only_one[0:2, 0:2] = 1  # a second image where class 2 is absent from both: it counts for class 1 only
    assert _seg_scores([(pred, truth), (only_one, only_one)], num_classes=3)["dice"] == pytest.approx((1 + 4 / 6) / 2)


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
