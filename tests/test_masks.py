"""One mask reader (data.masks): hand-made red / green / blue / grey / 16-bit / RGBA / palette masks read the same
through the reader itself, `localize import`, `localize eval` and fine-tuning's mask dataset."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from data.masks import MaskReadError, read_label_image, read_mask_image
from data.roi_cache import RoiCache
from data.sample import write_sample_corpus
from finetune.data import MaskedImages, read_mask_hw
from localize.evaluate import evaluate_cache
from localize.import_masks import import_masks


def roi_pattern(shape_hw: tuple[int, int], seed: int) -> np.ndarray:
    """A rectangle and a lone pixel: the ROI every variant below must read back exactly."""
    h, w = shape_hw
    roi = np.zeros(shape_hw, bool)
    top, left = 2 + seed % 3, 3 + seed % 5
    roi[top : top + h // 3, left : left + w // 4] = True
    roi[h - 2, w - 3] = True
    return roi


def _bgr(roi: np.ndarray, colour_bgr: tuple[int, int, int]) -> np.ndarray:
    image = np.zeros((*roi.shape, 3), np.uint8)
    image[roi] = colour_bgr
    return image


def write_variant(path: Path, roi: np.ndarray, variant: str) -> None:
    """`roi` written as a mask of one kind (OpenCV writes BGR: red is (0, 0, 255))."""
    if variant == "red":
        cv2.imwrite(str(path), _bgr(roi, (0, 0, 255)))
    elif variant == "green":
        cv2.imwrite(str(path), _bgr(roi, (0, 200, 0)))
    elif variant == "blue":
        cv2.imwrite(str(path), _bgr(roi, (90, 0, 0)))
    elif variant == "grey":
        cv2.imwrite(str(path), roi.astype(np.uint8) * 128)
    elif variant == "grey16":  # value 1 of 65535: non-zero, not "bright"
        cv2.imwrite(str(path), roi.astype(np.uint16))
    elif variant == "rgba":  # red ROI; white but fully transparent pixels and an opaque black band are background
        bgra = np.zeros((*roi.shape, 4), np.uint8)
        bgra[roi] = (0, 0, 255, 255)
        bgra[~roi] = (255, 255, 255, 0)
        bgra[0, :][~roi[0, :]] = (0, 0, 0, 255)
        cv2.imwrite(str(path), bgra)
    elif variant == "grey_alpha":  # PIL 'LA': grey 255 everywhere, opaque only on the ROI
        la = np.stack([np.full(roi.shape, 255, np.uint8), roi.astype(np.uint8) * 255], axis=-1)
        Image.fromarray(la, mode="LA").save(path)
    elif variant == "palette":  # index 1 -> red
        image = Image.fromarray(roi.astype(np.uint8), mode="P")
        image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
        image.save(path)
    else:
        raise ValueError(variant)


VARIANTS = ("red", "green", "blue", "grey", "grey16", "rgba", "grey_alpha", "palette")


@pytest.mark.parametrize("variant", VARIANTS)
def test_reader_any_channel_is_roi_and_transparent_is_background(tmp_path, variant):
    roi = roi_pattern((20, 28), seed=1)
    path = tmp_path / f"{variant}.png"
    write_variant(path, roi, variant)
    mask = read_mask_image(path)
    assert mask.dtype == bool and mask.shape == (20, 28)
    np.testing.assert_array_equal(mask, roi)


def test_reader_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.png: mask file not found"):
        read_mask_image(tmp_path / "absent.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    with pytest.raises(MaskReadError, match="broken.png: not a readable image"):
        read_mask_image(tmp_path / "broken.png")


def test_label_image_reads_grey_class_ids_and_refuses_colour_codes(tmp_path):
    labels = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    cv2.imwrite(str(tmp_path / "grey.png"), labels)
    cv2.imwrite(str(tmp_path / "grey_as_bgr.png"), np.repeat(labels[..., None], 3, axis=2))
    for name in ("grey.png", "grey_as_bgr.png"):
        np.testing.assert_array_equal(read_label_image(tmp_path / name), labels)
    cv2.imwrite(str(tmp_path / "coded.png"), _bgr(labels > 0, (0, 0, 255)))
    with pytest.raises(MaskReadError, match="coded.png: a colour-coded label image"):
        read_label_image(tmp_path / "coded.png")


@pytest.fixture(scope="module")
def corpus_and_masks(tmp_path_factory):
    """A 9-item sample corpus; for each item, its own ROI pattern as grey masks and in every variant, cycling."""
    root = tmp_path_factory.mktemp("masks")
    corpus = root / "corpus"
    write_sample_corpus(corpus, n=3, size=48)
    cache = root / "grey.zarr"
    import_masks(corpus / "truth", cache, corpus=corpus, progress=False)  # only for the item list and sizes
    table = RoiCache.open(cache).table()
    grey, coloured = root / "grey", root / "coloured"
    grey.mkdir()
    coloured.mkdir()
    patterns, variants = {}, {}
    for i, row in table.iterrows():
        roi = roi_pattern((int(row.height), int(row.width)), seed=i)
        patterns[row.item_id], variants[row.item_id] = roi, VARIANTS[i % len(VARIANTS)]
        write_variant(grey / f"{row.item_id}.png", roi, "grey")
        write_variant(coloured / f"{row.item_id}.png", roi, variants[row.item_id])
    assert "red" in variants.values()
    return corpus, grey, coloured, patterns, variants, table.set_index("item_id")


def test_localize_import_reads_every_variant_as_its_roi(corpus_and_masks, tmp_path):
    corpus, _, coloured, patterns, variants, _ = corpus_and_masks
    summary = import_masks(coloured, tmp_path / "c.zarr", corpus=corpus, progress=False)
    assert summary.done == len(patterns) and summary.failed == 0
    cache = RoiCache.open(tmp_path / "c.zarr")
    for i, item_id in enumerate(cache.table().item_id):
        # items no larger than the stored S x S come back exactly
        np.testing.assert_array_equal(cache.read_mask(i).astype(bool), patterns[item_id], err_msg=variants[item_id])


def test_localize_eval_scores_coloured_truth_like_grey(corpus_and_masks, tmp_path):
    corpus, grey, coloured, patterns, _, _ = corpus_and_masks
    import_masks(grey, tmp_path / "g.zarr", corpus=corpus, progress=False)  # the cache holds the exact patterns
    scores, summary = evaluate_cache(RoiCache.open(tmp_path / "g.zarr"), coloured)
    assert summary["evaluated"] == len(patterns)
    assert (scores.dice == 1.0).all() and (scores.iou == 1.0).all()  # a red truth read as empty would score 0


def test_fine_tuning_masks_read_every_variant(corpus_and_masks):
    corpus, _, coloured, patterns, variants, table = corpus_and_masks
    for item_id, roi in patterns.items():
        mask = read_mask_hw(coloured / f"{item_id}.png").numpy()
        np.testing.assert_array_equal(mask, roi.astype(np.int64), err_msg=variants[item_id])
    # and through the dataset the segmentation task trains on
    red = next(item_id for item_id, v in variants.items() if v == "red")
    row = table.loc[red]
    rows = [{"path": row.path, "frame": int(row.frame), "modality": row.modality, "mask_path": coloured / f"{red}.png"}]
    _, mask = MaskedImages(corpus, pd.DataFrame(rows))[0]
    np.testing.assert_array_equal(mask.numpy(), patterns[red].astype(np.int64))
