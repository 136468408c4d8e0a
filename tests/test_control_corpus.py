"""The positive-control corpus (`python -m data sample --mode control`): the class lies only in the lesion.

The label reader here is written independently of the generator: it looks at the power spectrum of the pixels
under a mask and counts the orientations of the energy in the texture's frequency band (1: stripes, 2 at 90
degrees: grid, 3 at 60 degrees: hex, otherwise: maze). It reads the class from the ROI pixels alone, and reads
chance from background pixels.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from data.manifest import read_manifest, scan_corpus
from data.sample import main, write_sample_corpus
from data.sample.control import class_labels, compose, render_scene
from data.sample.textures import TEXTURE_CLASSES

N, SIZE = 120, 96


def orientation_shares(img_hw: np.ndarray, mask_hw: np.ndarray) -> tuple[float, float, float]:
    """Share of the band energy (periods 4-8 px) within 15 degrees of the strongest orientation; of it and the
    one at +90 degrees; of it and those at +-60 degrees. Pixels outside the mask are not read."""
    x = np.where(mask_hw, img_hw - img_hw[mask_hw].mean(), 0.0)
    power = np.abs(np.fft.fft2(x)) ** 2
    n = img_hw.shape[0]
    f = np.fft.fftfreq(n) * n
    fy, fx = np.meshgrid(f, f, indexing="ij")
    band = (np.hypot(fy, fx) >= n / 8) & (np.hypot(fy, fx) <= n / 4)
    energy, angle = power[band], np.mod(np.arctan2(fy, fx), np.pi)[band]
    peak = angle[np.argmax(energy)]

    def share(offsets: list[float]) -> float:
        dist = np.min([np.abs(np.mod(angle - peak - o + np.pi / 2, np.pi) - np.pi / 2) for o in offsets], axis=0)
        return float(energy[dist < np.radians(15)].sum() / energy.sum())

    return share([0]), share([0, np.pi / 2]), share([0, np.pi / 3, 2 * np.pi / 3])


def read_class(img_hw: np.ndarray, mask_hw: np.ndarray) -> int:
    one, two, three = orientation_shares(img_hw, mask_hw)
    return 0 if one > 0.75 else 1 if two > 0.8 else 2 if three > 0.8 else 3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("control") / "corpus"
    write_sample_corpus(root, n=N, seed=3, size=SIZE, mode="control")
    return root


def _read(corpus: Path, row) -> tuple[np.ndarray, np.ndarray]:
    image = cv2.imread(str(corpus / row.path), cv2.IMREAD_UNCHANGED).astype(np.float32) / 255
    mask = cv2.imread(str(corpus / "truth" / f"{row.item_id}.png"), cv2.IMREAD_UNCHANGED) > 0
    return image, mask


def test_the_background_and_the_region_are_the_same_whatever_the_class():
    for index in range(6):
        scenes = [render_scene(11, index, SIZE, label) for label in range(len(TEXTURE_CLASSES))]
        for other in scenes[1:]:
            assert np.array_equal(other.background_hw, scenes[0].background_hw)
            assert np.array_equal(other.mask_hw, scenes[0].mask_hw)
            outside = ~other.mask_hw
            assert np.array_equal(other.image_hw[outside], scenes[0].image_hw[outside])
            assert not np.array_equal(other.image_hw[other.mask_hw], scenes[0].image_hw[other.mask_hw])


def test_the_written_label_is_read_from_the_roi_pixels_and_not_from_the_background(corpus):
    labels = pd.read_csv(corpus / "labels.csv")
    from_roi, from_background = [], []
    for row in labels.itertuples():
        image, mask = _read(corpus, row)
        from_roi.append(TEXTURE_CLASSES[read_class(image, mask)] == row.label)
        # a background window of the lesion's own shape and size, moved half an image away
        window = np.roll(mask, (SIZE // 2, SIZE // 2), axis=(0, 1)) & ~mask
        from_background.append(TEXTURE_CLASSES[read_class(image, window)] == row.label)
    assert np.mean(from_roi) >= 0.95
    assert np.mean(from_background) < 0.45  # chance is 0.25 (sd ~0.04 at 120 images)


def test_swapping_backgrounds_between_classes_keeps_each_label():
    labels = class_labels(16, 5)
    pairs = [(i, j) for i in range(16) for j in range(16) if labels[i] != labels[j]][:12]
    for i, j in pairs:
        a, b = (render_scene(5, k, SIZE, labels[k]) for k in (i, j))
        a_on_b = compose(b.background_hw, a.mask_hw, a.lesion_hw)
        b_on_a = compose(a.background_hw, b.mask_hw, b.lesion_hw)
        assert read_class(a_on_b, a.mask_hw) == read_class(a.image_hw, a.mask_hw) == labels[i]
        assert read_class(b_on_a, b.mask_hw) == read_class(b.image_hw, b.mask_hw) == labels[j]


def test_truth_masks_are_exactly_the_drawn_regions_and_the_files_are_the_scenes(corpus):
    labels = pd.read_csv(corpus / "labels.csv")
    for row in labels.head(20).itertuples():
        index = int(row.path.split("_")[-1].split(".")[0])
        scene = render_scene(3, index, SIZE, TEXTURE_CLASSES.index(row.label))
        image, mask = _read(corpus, row)
        assert np.array_equal(mask, scene.mask_hw) and mask.sum() > 0.14**2 * 0.5 * SIZE**2
        pixels = cv2.imread(str(corpus / row.path), cv2.IMREAD_UNCHANGED)
        assert pixels.dtype == np.uint8 and pixels.shape == (SIZE, SIZE)
        expected = np.round(np.where(scene.mask_hw, scene.lesion_hw, scene.background_hw) * 255)
        assert np.array_equal(pixels, expected.astype(np.uint8))
        n_components, _ = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        assert n_components == 2  # background + one lesion


def test_classes_are_balanced_the_split_is_fixed_and_pretraining_skips_the_test_split(corpus, tmp_path):
    labels = pd.read_csv(corpus / "labels.csv")
    assert sorted(labels.label.unique()) == sorted(TEXTURE_CLASSES) and (labels.modality == "OT").all()
    counts = labels.groupby(["label", "split"]).size().unstack()
    # 30 per class cut 60/10/30 at rank quantiles: 18 train, 3 val, 9 test
    assert (counts["train"] == 18).all() and (counts["val"] == 3).all() and (counts["test"] == 9).all()
    manifest = read_manifest(corpus / "pretrain" / "manifest.parquet")
    assert set(manifest.item_id) == set(labels.item_id[labels.split != "test"])
    scanned, failures = scan_corpus(corpus, workers=1, progress=False)
    assert failures.empty and len(scanned) == N  # truth/, labels and the manifest are kept out of the scan
    expected = scanned[scanned.item_id.isin(manifest.item_id)].reset_index(drop=True)
    # the item columns of a scan (the grouping keys need the corpus key: each control image is its own patient)
    pd.testing.assert_frame_equal(manifest, expected[list(manifest.columns)])
    write_sample_corpus(tmp_path / "again", n=N, seed=3, size=SIZE, mode="control")
    assert (tmp_path / "again" / "labels.csv").read_bytes() == (corpus / "labels.csv").read_bytes()


def test_cli_writes_the_control_corpus_and_refuses_bad_sizes(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "c"), "--mode", "control", "--n", "8", "--size", "48"]) == 0
    assert len(pd.read_csv(tmp_path / "c" / "labels.csv")) == 8
    assert "control corpus" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "d"), "--mode", "control", "--size", "16"])
    assert "size must be >= 32" in capsys.readouterr().err
