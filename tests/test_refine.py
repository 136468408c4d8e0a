"""Saliency -> ROI refinement as the release does it, on hand-made non-square cases (a swapped x/y cannot pass):
nearest resize, 8-bit binarisation, top-k components with ties, box prompts, SAM union + K largest, rectangles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from data.roi_rects import expanded_rects
from localize.components import binarise, largest_components, prompt_boxes, to_image_size
from localize.models import load_sam
from localize.prompts import PromptConfig, combine_saliency
from localize.refine import RefineConfig, refine_batch
from localize.saliency import build_saliency, encode_prompts, image_text_scores
from localize.sam_prompter import SamBoxPrompter

pytest_plugins = ["tests.localize_fixtures"]  # fixtures: standins, clip, clip_dir, sam


def test_map_goes_to_the_image_with_opencv_nearest():
    map_23 = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], np.float32)
    # integer scales (2 rows, 3 columns per pixel): every value repeated, rows and columns not swapped
    np.testing.assert_array_equal(to_image_size(map_23, (4, 9)), np.repeat(np.repeat(map_23, 2, 0), 3, 1))
    # 3 -> 7 columns: OpenCV's INTER_NEAREST takes source floor(x * 3 / 7) = 0,0,0,1,1,2,2 (the release's call)
    np.testing.assert_array_equal(to_image_size(map_23, (2, 7))[0], map_23[0, [0, 0, 0, 1, 1, 2, 2]])


def test_binarise_uses_the_releases_8_bit_truncation():
    values = np.array([[0.3, 0.3015, 0.302, 1.0, 0.0]], np.float32)
    # floor(255 v) / 255 > 0.3: 76/255 = 0.298 (0.3 and 0.3015 fall below), 77/255 = 0.302 passes
    np.testing.assert_array_equal(binarise(values, 0.3), [[False, False, True, True, False]])


def blobs() -> np.ndarray:
    """A 10 x 17 mask: components of 6, 4, 4 and 1 pixels."""
    mask = np.zeros((10, 17), bool)
    mask[1:3, 1:4] = True  # 6 px
    mask[6, 2:6] = True  # 4 px, a row
    mask[4:8, 14] = True  # 4 px, a column
    mask[9, 9] = True  # 1 px
    return mask


def test_largest_components_keep_ties_as_the_release():
    kept = largest_components(blobs(), 2)  # top-2 sizes are 6 and 4: both 4-pixel components stay
    assert kept.sum() == 6 + 4 + 4 and not kept[9, 9]
    assert largest_components(blobs(), 1).sum() == 6
    assert largest_components(blobs(), 4).sum() == 15
    diagonal = np.eye(5, 7, dtype=bool)  # 8-connected: one component of 5 pixels
    assert largest_components(diagonal, 1).sum() == 5
    assert not largest_components(np.zeros((3, 4), bool), 2).any()


def test_prompt_boxes_clip_the_far_edge_to_the_last_pixel():
    mask = np.zeros((8, 12), bool)
    mask[5:8, 9:12] = True  # x=9, y=5, w=h=3 touching the bottom-right corner: far edge 12 -> 11, 8 -> 7
    mask[0:4, 1:3] = True  # x=1, y=0, w=2, h=4
    boxes = {tuple(b) for b in prompt_boxes(mask).tolist()}
    assert boxes == {(9.0, 5.0, 11.0, 7.0), (1.0, 0.0, 3.0, 4.0)}
    assert prompt_boxes(np.zeros((8, 12), bool)).shape == (0, 4)


def test_refine_without_sam_is_the_coarse_output():
    saliency = np.zeros((5, 17), np.float32)  # 2x nearest to 10 x 17 rows; columns 1:1
    saliency[0:2, 1:4] = 0.9
    saliency[3, 2:6] = 0.5
    saliency[2:4, 14] = 0.31
    image = np.zeros((10, 17), np.float32)
    (roi,) = refine_batch([saliency], [image], None, RefineConfig(use_sam=False))
    expected = np.zeros((10, 17), bool)
    expected[0:4, 1:4] = True  # 12 px
    expected[6:8, 2:6] = True  # 8 px
    # rows 4..7 of column 14 (0.31 -> 79/255 > 0.3) are a third component of 4 px: not kept
    np.testing.assert_array_equal(roi.roi_hw, expected)
    assert {tuple(b) for b in roi.boxes_k4.tolist()} == {(1.0, 0.0, 4.0, 4.0), (2.0, 6.0, 6.0, 8.0)}
    # without SAM the rectangles follow the release's coarse rule: one column and row more than the tight box
    assert {tuple(r) for r in roi.rects_k4.tolist()} == {(1, 0, 5, 5), (2, 6, 7, 9)}
    assert roi.score == pytest.approx((12 * 0.9 + 8 * 0.5) / 20, rel=1e-6) and np.isnan(roi.sam_iou)
    (nothing,) = refine_batch([np.zeros((5, 17), np.float32)], [image], None, RefineConfig(use_sam=False))
    assert nothing.empty and not nothing.roi_hw.any() and nothing.boxes_k4.shape == (0, 4) and nothing.score == 0.0


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


def test_refine_with_sam_keeps_the_k_largest_components_of_the_union(standins):
    # The random tiny SAM masks nearly the whole image at its threshold 0; at 0.02 its masks break into pieces,
    # so that the filter after the union has work to do (both paths read the model's `mask_threshold`).
    sam = load_sam(standins["sam"])
    sam.mask_threshold = 0.02
    rng = np.random.default_rng(3)
    saliency = np.zeros((40, 56), np.float32)
    saliency[4:12, 5:20] = 0.9
    saliency[25:36, 30:50] = 0.6
    images = [rng.random((40, 56)).astype(np.float32), rng.random((24, 24)).astype(np.float32)]
    results = refine_batch([saliency, np.zeros((24, 24), np.float32)], images, sam, RefineConfig())
    boxes = prompt_boxes(largest_components(binarise(saliency, 0.3), 2))
    predictor = SamPredictor(sam)  # segment_anything's own path: all boxes in one call, as prompt_sam.py
    predictor.set_torch_image(SamBoxPrompter(sam).prepare(images[0]), (40, 56))
    masks, iou, _ = predictor.predict_torch(
        None,
        None,
        boxes=predictor.transform.apply_boxes_torch(torch.from_numpy(boxes), (40, 56)),
        multimask_output=False,
    )
    union = masks[:, 0].any(0).numpy()
    assert largest_components(union, 10).sum() > largest_components(union, 2).sum()  # the filter has work here
    np.testing.assert_array_equal(results[0].roi_hw, largest_components(union, len(boxes)))
    np.testing.assert_array_equal(results[0].boxes_k4, boxes)
    assert {tuple(r) for r in results[0].rects_k4.tolist()} == {
        tuple(r) for r in expanded_rects(results[0].roi_hw, 1.0, "sam").tolist()
    }
    assert results[0].sam_iou == pytest.approx(float(iou.mean()))
    assert results[1].empty and not results[1].roi_hw.any() and np.isnan(results[1].sam_iou)


def test_refine_input_errors(sam):
    with pytest.raises(ValueError, match="2 saliency maps for 1 images"):
        refine_batch([blobs(), blobs()], [np.zeros((10, 17))], sam)
    with pytest.raises(ValueError, match="needs a SAM model"):
        refine_batch([blobs()], [np.zeros((10, 17))], None)
    with pytest.raises(ValueError, match="threshold"):
        RefineConfig(threshold=1.5)
    with pytest.raises(ValueError, match="expand_ratio"):
        RefineConfig(expand_ratio=0.0)
    assert RefineConfig().provenance() == {
        "threshold": 0.3,
        "top_k": 2,
        "use_sam": True,
        "expand_ratio": 1.0,
        "rect_rule": "sam",
    }  # the release's: threshold 0.3, --num-contours 2, SAM, EXPAND_RATIO=1 (zeroshot.sh)


def test_stand_in_pipeline_end_to_end(standins, clip, sam):
    """Config -> prompts -> saliency -> combine -> refine, as the batch job chains them."""
    model, tokenizer, preprocess, _ = clip
    prompts = PromptConfig.load(standins["prompts"]).for_modality("XR")
    rng = np.random.default_rng(2)
    images = [rng.random((70, 90)).astype(np.float32), rng.random((64, 64)).astype(np.float32)]
    text = encode_prompts(model, tokenizer, prompts.prompts)
    clip_images = preprocess(images)
    saliency_bphw = build_saliency({**standins["saliency"], "steps": 2, "noise_samples": 2})(model, clip_images, text)
    union = combine_saliency(saliency_bphw, prompts.combine)
    best = combine_saliency(saliency_bphw, "best", image_text_scores(model, clip_images, text))
    assert union.shape == best.shape == (2, 160, 160) and (union >= best).all()
    results = refine_batch(list(union), images, sam, RefineConfig(**standins["refine"]))
    for image, result in zip(images, results, strict=True):
        assert result.roi_hw.shape == image.shape and result.roi_hw.dtype == bool
        assert len(result.boxes_k4) >= 1 and result.empty == (not result.roi_hw.any())
