"""The positive control's shape design (`python -m data sample --mode control_shapes`): the class is the lesion's
outline and nothing else.

Expected values come from geometry, not from the generator: the area of a disc (pi r^2), a square (2 r^2), an
equilateral triangle (3 sqrt(3) / 4 r^2) and a cross (4 w (2 - w) a^2, arm half length a = r / hypot(1, w),
half width w a) of circumradius r, and the cross's solidity (its area over that of its octagonal hull). The label
reader is independent of the generator: it reads the class from the truth mask's contour alone (solidity, then
the corners of a polygon fitted to the contour).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pandas as pd
import pytest

from data.sample import main, write_sample_corpus
from data.sample.control import class_labels
from data.sample.control_shapes import CROSS_HALF_WIDTH, SHAPE_CLASSES, outline_mask, render_scene

N, SIZE = 40, 64


def read_shape(mask_hw: np.ndarray) -> str:
    """The outline's class from the mask alone: concave -> cross; else 3 or 4 corners -> triangle / square; disc."""
    contours, _ = cv2.findContours(mask_hw.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    solidity = cv2.contourArea(contour) / cv2.contourArea(cv2.convexHull(contour))
    if solidity < 0.85:
        return "cross"
    corners = len(cv2.approxPolyDP(contour, 0.04 * cv2.arcLength(contour, True), True))
    return {3: "triangle", 4: "square"}.get(corners, "disc")


@pytest.mark.parametrize("angle", [0.0, 0.7])
def test_outline_areas_and_the_cross_concavity_follow_the_geometry(angle):
    r, w = 100.0, CROSS_HALF_WIDTH
    a = r / math.hypot(1, w)
    expected = {
        "disc": math.pi * r**2,
        "square": 2 * r**2,
        "triangle": 3 * math.sqrt(3) / 4 * r**2,
        "cross": 4 * w * (2 - w) * a**2,
    }
    for label, name in enumerate(SHAPE_CLASSES):
        mask = outline_mask(label, 256, np.array([128.0, 128.0]), r, angle)
        assert mask.sum() == pytest.approx(expected[name], rel=0.03), name
        assert read_shape(mask) == name
    # the cross's hull is an octagon: the square of side 2a less four corner triangles of legs (1 - w) a
    cross = outline_mask(SHAPE_CLASSES.index("cross"), 256, np.array([128.0, 128.0]), r, angle)
    contours, _ = cv2.findContours(cross.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    hull_area = cv2.contourArea(cv2.convexHull(contours[0]))
    assert cross.sum() / hull_area == pytest.approx(4 * w * (2 - w) / (4 - 2 * (1 - w) ** 2), rel=0.03)


def test_only_the_outline_depends_on_the_class():
    for index in range(3):
        scenes = [render_scene(5, index, SIZE, label) for label in range(len(SHAPE_CLASSES))]
        for scene in scenes[1:]:
            np.testing.assert_array_equal(scene.background_hw, scenes[0].background_hw)
            np.testing.assert_array_equal(scene.lesion_hw, scenes[0].lesion_hw)  # level, texture: class-free
        assert [read_shape(s.mask_hw) for s in scenes] == list(SHAPE_CLASSES)
        outside = ~np.any([s.mask_hw for s in scenes], axis=0)
        for scene in scenes:
            np.testing.assert_array_equal(scene.image_hw[outside], scenes[0].background_hw[outside])
            np.testing.assert_array_equal(scene.image_hw[scene.mask_hw], scene.lesion_hw[scene.mask_hw])


def test_the_corpus_labels_are_the_outlines_balanced_and_split_as_the_texture_design(tmp_path):
    shapes, textures = tmp_path / "shapes", tmp_path / "textures"
    write_sample_corpus(shapes, n=N, seed=2, mode="control_shapes")
    write_sample_corpus(textures, n=N, seed=2, size=SIZE, mode="control")
    labels = pd.read_csv(shapes / "labels.csv")
    read = [
        read_shape(cv2.imread(str(shapes / "truth" / f"{i}.png"), cv2.IMREAD_GRAYSCALE) > 0) for i in labels.item_id
    ]
    assert read == labels.label.tolist()
    assert labels.label.value_counts().to_dict() == {name: N // 4 for name in SHAPE_CLASSES}
    assert labels.label.tolist() == [SHAPE_CLASSES[k] for k in class_labels(N, 2)]
    image = cv2.imread(str(shapes / labels.path[0]), cv2.IMREAD_UNCHANGED)
    assert image.shape == (SIZE, SIZE) and image.dtype == np.uint8  # the mode's default size
    other = pd.read_csv(textures / "labels.csv")
    assert labels.split.tolist() == other.split.tolist() and labels.path.tolist() == other.path.tolist()
    assert "outline" in (shapes / "README.txt").read_text()


def test_cli_writes_the_shape_corpus(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "c"), "--mode", "control_shapes", "--n", "8"]) == 0
    assert "control_shapes corpus" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "c" / "labels.csv")) == 8
