"""Saliency -> ROI refinement: components, top-k, box expansion, empty ROIs, batched SAM == SamPredictor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from localize.prompts import PromptConfig, combine_saliency
from localize.refine import (
    RefineConfig,
    SamBoxPrompter,
    expand_to_boxes,
    refine_batch,
    saliency_components,
)
from localize.saliency import build_saliency, encode_prompts, image_text_scores

pytest_plugins = ["tests.localize_fixtures"]  # fixtures: standins, clip, clip_dir, sam


def three_blobs() -> np.ndarray:
    """A 40x50 map: a 6x8 blob, a diagonal 3-pixel chain (one 8-connected component) and a 2x2 blob."""
    saliency = np.zeros((40, 50), np.float32)
    saliency[4:10, 5:13] = 0.9  # area 48, box (5, 4, 13, 10)
    saliency[[20, 21, 22], [30, 31, 32]] = 0.5  # area 3 (diagonal)
    saliency[30:32, 40:42] = 0.31  # area 4, just above 0.3
    saliency[35:39, 0:4] = 0.3  # not above the threshold
    return saliency


def test_components_keep_the_largest_with_their_boxes():
    mask, boxes = saliency_components(three_blobs(), threshold=0.3, top_k=2)
    assert boxes.tolist() == [[5, 4, 13, 10], [40, 30, 42, 32]]
    assert mask.sum() == 48 + 4 and mask[4:10, 5:13].all() and not mask[20, 30]
    mask3, boxes3 = saliency_components(three_blobs(), threshold=0.3, top_k=3)
    assert boxes3[2].tolist() == [30, 20, 33, 23] and mask3.sum() == 48 + 4 + 3  # diagonal pixels are one component
    empty, no_boxes = saliency_components(np.full((8, 8), 0.3, np.float32), threshold=0.3, top_k=2)
    assert not empty.any() and no_boxes.shape == (0, 4)


def test_box_expansion_fills_and_scales_about_the_centre():
    l_shape = np.zeros((20, 20), bool)
    l_shape[8:12, 8] = True
    l_shape[11, 8:12] = True
    tight = expand_to_boxes(l_shape, 1.0)
    assert tight.sum() == 16 and tight[8:12, 8:12].all()
    doubled = expand_to_boxes(l_shape, 2.0)
    assert doubled.sum() == 64 and doubled[6:14, 6:14].all()
    corner = np.zeros((10, 10), bool)
    corner[0:2, 0:2] = True
    assert expand_to_boxes(corner, 3.0).sum() == 16  # (-2..4) clipped to 0..4 on both axes


def test_refine_without_sam_keeps_components_and_flags_empty_images():
    images = [np.zeros((40, 50), np.float32), np.zeros((20, 30, 3), np.float32)]
    saliency = [three_blobs(), np.zeros((20, 30), np.float32)]
    roi, nothing = refine_batch(saliency, images, None, RefineConfig(use_sam=False))
    expected_mask, expected_boxes = saliency_components(three_blobs(), 0.3, 2)
    assert np.array_equal(roi.roi_hw, expected_mask) and np.array_equal(roi.boxes_k4, expected_boxes)
    assert not roi.empty and np.isnan(roi.sam_iou)
    assert roi.score == pytest.approx((48 * 0.9 + 4 * 0.31) / 52, rel=1e-5)
    assert nothing.empty and not nothing.roi_hw.any() and nothing.roi_hw.shape == (20, 30)
    assert nothing.boxes_k4.shape == (0, 4) and nothing.score == 0.0


def test_refine_resizes_low_resolution_saliency_and_expands_boxes():
    saliency = np.zeros((10, 10), np.float32)
    saliency[2:4, 2:4] = 1.0
    (roi,) = refine_batch(
        [torch.from_numpy(saliency)],
        [np.zeros((40, 40), np.float32)],
        None,
        RefineConfig(use_sam=False, box_expansion=2.0),
    )
    x0, y0, x1, y1 = roi.boxes_k4[0]
    assert roi.roi_hw.shape == (40, 40) and 6 <= x0 <= 8 and 16 <= x1 <= 18 and (x0, y0, x1, y1) == (y0, x0, y1, x1)
    rows, cols = np.nonzero(roi.roi_hw)
    assert roi.roi_hw.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)  # one filled rectangle ...
    assert np.ptp(rows) + 1 >= 2 * (y1 - y0) - 1  # ... twice the component's size


def test_batched_sam_equals_sam_predictor_per_image(sam):
    rng = np.random.default_rng(0)
    images = [
        rng.random((40, 60)).astype(np.float32),
        rng.random((50, 30, 3)).astype(np.float32),
        (rng.random((64, 64, 3)) * 255).astype(np.uint8),
    ]
    boxes = [
        np.array([[5, 4, 30, 20], [35, 25, 55, 38]], np.float32),
        np.array([[2, 3, 25, 40]], np.float32),
        np.array([[10, 10, 50, 40]], np.float32),
    ]
    prompter = SamBoxPrompter(sam)
    embeddings, input_sizes = prompter.embed(images)  # one stacked encoder pass over padded images
    predictor = SamPredictor(sam)
    for i, image in enumerate(images):
        size = image.shape[:2]
        logits, iou = prompter.masks(embeddings[i : i + 1], torch.from_numpy(boxes[i]), input_sizes[i], size)
        predictor.set_torch_image(prompter.prepare(image), size)
        expected_logits, expected_iou, _ = predictor.predict_torch(
            None,
            None,
            boxes=predictor.transform.apply_boxes_torch(torch.from_numpy(boxes[i]), size),
            multimask_output=False,
            return_logits=True,
        )
        assert logits.shape == (len(boxes[i]), *size)
        assert torch.allclose(logits, expected_logits[:, 0], atol=1e-4)
        assert torch.allclose(iou, expected_iou[:, 0], atol=1e-5)


def test_refine_with_sam_is_the_union_of_the_box_masks(sam):
    rng = np.random.default_rng(1)
    images = [rng.random((40, 50)).astype(np.float32), rng.random((24, 24)).astype(np.float32)]
    results = refine_batch([three_blobs(), np.zeros((24, 24), np.float32)], images, sam, RefineConfig())
    _, boxes = saliency_components(three_blobs(), 0.3, 2)
    predictor = SamPredictor(sam)
    predictor.set_torch_image(SamBoxPrompter(sam).prepare(images[0]), (40, 50))
    masks, iou, _ = predictor.predict_torch(
        None,
        None,
        boxes=predictor.transform.apply_boxes_torch(torch.from_numpy(boxes), (40, 50)),
        multimask_output=False,
    )
    assert results[0].roi_hw.any() and np.array_equal(results[0].roi_hw, masks[:, 0].any(0).numpy())
    assert np.array_equal(results[0].boxes_k4, boxes) and results[0].sam_iou == pytest.approx(float(iou.mean()))
    assert results[1].empty and not results[1].roi_hw.any() and np.isnan(results[1].sam_iou)


def test_refine_input_errors(sam):
    with pytest.raises(ValueError, match="2 saliency maps for 1 images"):
        refine_batch([three_blobs(), three_blobs()], [np.zeros((40, 50))], sam)
    with pytest.raises(ValueError, match="needs a SAM model"):
        refine_batch([three_blobs()], [np.zeros((40, 50))], None)
    with pytest.raises(ValueError, match="threshold"):
        RefineConfig(threshold=1.5)
    with pytest.raises(ValueError, match="box_expansion"):
        RefineConfig(box_expansion=0.0)


def test_stand_in_pipeline_end_to_end(standins, clip, sam):
    """Config -> prompts -> saliency -> combine -> refine, as the batch job chains them."""
    model, tokenizer, preprocess, _ = clip
    prompts = PromptConfig.load(standins["prompts"]).for_modality("XR")
    rng = np.random.default_rng(2)
    images = [rng.random((70, 90)).astype(np.float32), rng.random((64, 64)).astype(np.float32)]
    text = encode_prompts(model, tokenizer, prompts.prompts)
    clip_images = preprocess(images)
    saliency_bphw = build_saliency({**standins["saliency"], "steps": 2})(model, clip_images, text)
    union = combine_saliency(saliency_bphw, prompts.combine)
    best = combine_saliency(saliency_bphw, "best", image_text_scores(model, clip_images, text))
    assert union.shape == best.shape == (2, 160, 160) and (union >= best).all()
    results = refine_batch(list(union), images, sam, RefineConfig(**standins["refine"]))
    for image, result in zip(images, results, strict=True):
        assert result.roi_hw.shape == image.shape and result.roi_hw.dtype == bool
        assert 1 <= len(result.boxes_k4) <= 2 and result.empty == (not result.roi_hw.any())
