"""The small SAM's loss and box prompts against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from smallmodels.sam_data import ImageObjects, balanced_pairs, noisy_box, object_masks
from smallmodels.sam_loss import SamLoss, dice_loss, focal_loss, mask_iou


def test_focal_loss_hand_values():
    # p = sigmoid(0) = 0.5: CE = ln 2, (1 - p_t)^2 = 1/4; alpha 0.25 on positives, 0.75 on negatives.
    logits = torch.zeros(2, 1, 2)
    truth = torch.tensor([[[1.0, 1.0]], [[1.0, 0.0]]])
    positives = 0.25 * 0.25 * math.log(2)
    both = (0.25 * 0.25 * math.log(2) + 0.75 * 0.25 * math.log(2)) / 2
    assert focal_loss(logits[:1], truth[:1]).item() == pytest.approx(positives, rel=1e-5)
    assert focal_loss(logits, truth).item() == pytest.approx((positives + both) / 2, rel=1e-5)  # per mask, then mean


def test_dice_loss_hand_values():
    truth = torch.zeros(1, 4, 4)
    truth[0, :2, :2] = 1  # 4 pixels
    perfect = torch.where(truth > 0, 50.0, -50.0)
    assert dice_loss(perfect, truth).item() == pytest.approx(0.0, abs=1e-6)
    # nothing predicted: 1 - (0 + 1) / (0 + 4 + 1)
    assert dice_loss(torch.full_like(truth, -50.0), truth).item() == pytest.approx(1 - 1 / 5, rel=1e-5)


def test_mask_iou_and_weights():
    truth = torch.zeros(1, 4, 4)
    truth[0, :2, :2] = 1  # 4 pixels
    logits = torch.full((1, 4, 4), -5.0)
    logits[0, :2, :] = 5.0  # 8 pixels predicted, 4 of them right: IoU 4 / 8
    assert mask_iou(logits, truth).item() == pytest.approx(0.5)
    out = SamLoss()(logits, torch.tensor([0.9]), truth)
    assert out["iou_mse"].item() == pytest.approx((0.9 - 0.5) ** 2, rel=1e-5)
    expected = out["focal"] + out["dice"] + out["iou_mse"]  # ours 1:1 focal:dice (FIDELITY), IoU MSE weight 1
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    sam_paper = SamLoss(focal_weight=20.0)(logits, torch.tensor([0.9]), truth)  # the paper's 20:1, as an option
    assert sam_paper["loss"].item() == pytest.approx((expected + 19 * out["focal"]).item(), rel=1e-6)


def test_the_module_default_is_the_documented_one_to_one():
    import inspect

    from smallmodels.sam_module import SamBoxTraining

    assert inspect.signature(SamBoxTraining.__init__).parameters["focal_weight"].default == SamLoss().focal_weight
    assert SamLoss().focal_weight == 1.0


def test_noisy_box_exact_grown_and_seeded():
    mask = np.zeros((40, 60), bool)
    mask[10:20, 30:45] = True  # rows 10-19, columns 30-44: xyxy (30, 10, 45, 20) as the localizer's prompt box
    exact = noisy_box(mask, 0.0, np.random.default_rng(0))
    np.testing.assert_allclose(exact, [30, 10, 45, 20])  # x from columns, y from rows
    grown = noisy_box(mask, 0.0, np.random.default_rng(1), grow=0.25)
    assert (grown[:2] <= exact[:2]).all() and (grown[2:] >= exact[2:]).all() and (grown != exact).any()
    assert grown[2] <= 59 and grown[3] <= 39  # clipped to the image
    np.testing.assert_array_equal(grown, noisy_box(mask, 0.0, np.random.default_rng(1), grow=0.25))


def test_object_masks_components_and_union():
    truth = np.zeros((20, 20), np.uint8)
    truth[2:8, 2:8] = 1
    truth[12:18, 12:18] = 1  # two lungs: each one, and both under one box
    masks = object_masks(truth, [])
    assert len(masks) == 3 and masks[2].sum() == 72 and {int(m.sum()) for m in masks[:2]} == {36}


def test_foreground_objects_are_prompted_by_the_body_box():
    image = np.zeros((20, 20), np.float32)
    image[2:18, 4:16] = 0.5  # the body
    tumour = np.zeros((20, 20), bool)
    tumour[8:11, 8:11] = True
    # objects: the tumour (its own box), then the whole truth from the body's box, then an empty whole truth
    item = ImageObjects(image, (tumour, tumour, np.zeros_like(tumour)), "MR", n_foreground=2)
    np.testing.assert_array_equal(item.box_mask(0), tumour)
    for k in (1, 2):
        np.testing.assert_allclose(noisy_box(item.box_mask(k), 0.0, np.random.default_rng(0)), [4, 2, 16, 18])
    assert not ImageObjects(image, (tumour,), "MR").box_mask(0)[0, 0]  # no foreground objects: the object's box


def test_balanced_pairs_repeat_the_rare_modality():
    image, mask = np.zeros((4, 4), np.float32), np.ones((4, 4), bool)
    lungs = [ImageObjects(image, (mask, mask, mask), "CT") for _ in range(4)]  # 12 objects
    tumours = [ImageObjects(image, (mask,), "MR") for _ in range(2)]  # 2 objects: repeated round(12 / 2) = 6 times
    pairs = balanced_pairs(lungs + tumours)
    assert len(pairs) == 12 + 12
    assert sorted(p for p in pairs if p[0] >= 4) == sorted([(4, 0), (5, 0)] * 6)
    assert sorted(p for p in pairs if p[0] < 4) == [(i, k) for i in range(4) for k in range(3)]
