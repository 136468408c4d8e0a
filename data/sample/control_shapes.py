"""The positive control's shape design (`python -m data sample --mode control_shapes`, issue 26): the class is
the lesion's OUTLINE, the lesion's content and the background are drawn without it.

Why a second design: on the texture design (`data.sample.control`) masked pretraining never beat a randomly
initialised encoder (docs/STUDY.md, pilots 1-22): a random convnet already reads a texture's orientation, and the
rotation-invariant texture classes are read by neither. An outline is coarse structure spread over several
8 px cells, which the reconstruction of a masked lesion cell has to infer from the visible ones, and which the
lesion-pooled features of a random encoder read poorly (0.31-0.36 against chance 0.25).

Each item (64 px by default):
- a smooth background from its own stream, never from the class: a brightness ramp and low-frequency mottling
  (the texture design's first and last-but-one draws: no flat shapes, arcs or grain), so the reconstruction loss
  is spent on the lesion;
- one lesion: a disc, square, equilateral triangle or cross (the class) of circumradius 22-30% of the side, at
  a random place and rotation, filled with a grey level and a texture of a class-free kind (one of the four
  gratings of `data.sample.textures`, its kind drawn from the texture stream, never from the class).
The streams are the texture design's (`data.sample.control`: same seeds, same item order and file names, same
split), so the two corpora differ only in the background and the lesion. The truth mask is the drawn outline.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from data.sample import control
from data.sample.shapes import smooth_noise
from data.sample.spec import Item, Slice, item_rng
from data.sample.textures import TEXTURE_CLASSES, texture_field
from data.sample.writers import write_png

SHAPE_CLASSES = ("disc", "square", "triangle", "cross")
RADIUS_RANGE = (0.22, 0.30)  # circumradius, fraction of the image side
CROSS_HALF_WIDTH = 0.33  # half the width of a cross's arm, fraction of the arm's half length


def _cross() -> np.ndarray:
    w = CROSS_HALF_WIDTH
    corners = [(1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w), (-w, -1), (w, -1), (w, -w)]
    return np.array([*corners, (1, -w)], np.float64) / math.hypot(1, w)  # circumradius 1


def _regular(corners: int, first_deg: float = 0.0) -> np.ndarray:
    angles = np.arange(corners) * 2 * math.pi / corners + math.radians(first_deg)
    return np.stack([np.cos(angles), np.sin(angles)], 1)


# unit-circumradius outlines (x, y) before rotation; the disc as a 48-gon
OUTLINES = {"disc": _regular(48), "square": _regular(4, 45.0), "triangle": _regular(3), "cross": _cross()}


def smooth_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Class-free and nearly free to reconstruct: a brightness ramp and low-frequency mottling; (size, size)."""
    rows, cols = np.mgrid[:size, :size].astype(np.float32) / size - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    img = rng.uniform(0.3, 0.6) + rng.uniform(0.2, 0.5) * (cols * np.cos(angle) + rows * np.sin(angle))
    img = img + rng.uniform(0.02, 0.06) * smooth_noise(rng, (size, size), size / 12)
    return np.clip(img, 0, 1).astype(np.float32)


def outline_mask(label: int, size: int, center_xy: np.ndarray, radius: float, angle: float) -> np.ndarray:
    """The filled outline of shape class `label` (circumradius `radius` px, rotated by `angle`), bool (size, size)."""
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    corners = OUTLINES[SHAPE_CLASSES[label]] @ rotation.T * radius + center_xy
    return cv2.fillPoly(np.zeros((size, size), np.uint8), [np.round(corners).astype(np.int32)], 1).astype(bool)


def draw_lesion(region_rng: np.random.Generator, texture_rng: np.random.Generator, label: int, size: int):
    """(mask, lesion pixels): outline `label` at a class-free radius, place, rotation, level and contrast,
    filled with a texture whose kind and period come from the texture stream."""
    radius = region_rng.uniform(*RADIUS_RANGE) * size
    center_xy = region_rng.uniform(radius + 2, size - radius - 2, 2)
    angle = region_rng.uniform(0, 2 * np.pi)
    level, contrast = float(region_rng.uniform(0.2, 0.8)), float(region_rng.uniform(0.06, 0.12))
    mask_hw = outline_mask(label, size, center_xy, radius, angle)
    period = float(texture_rng.uniform(*control.PERIOD_RANGE_PX))
    kind = TEXTURE_CLASSES[int(texture_rng.integers(len(TEXTURE_CLASSES)))]
    texture_hw = texture_field(kind, (size, size), period, texture_rng)
    return mask_hw, np.clip(level + contrast * texture_hw, 0, 1).astype(np.float32)


def render_scene(seed: int, index: int, size: int, label: int) -> control.Scene:
    """Item `index`'s background (fixed by (seed, index)) and lesion of shape class `label`."""
    spec = control.SPEC
    background_hw = smooth_background(item_rng(seed, spec, control.BACKGROUND_STREAM, index), size)
    mask_hw, lesion_hw = draw_lesion(
        item_rng(seed, spec, control.REGION_STREAM, index),
        item_rng(seed, spec, control.TEXTURE_STREAM, index),
        label,
        size,
    )
    return control.Scene(background_hw, mask_hw, lesion_hw, label)


def make_items(out: Path, n: int, seed: int, size: int) -> Iterator[Item]:
    """n images, one 8-bit PNG each, with their shape class (the texture design's files, labels' order, strata)."""
    for i, label in enumerate(control.class_labels(n, seed)):
        scene = render_scene(seed, i, size, label)
        relpath = f"{control.SPEC.folder}/img_{i:05d}.png"
        write_png(out / relpath, np.round(scene.image_hw * 255).astype(np.uint8))
        rendered = Slice(scene.image_hw, scene.mask_hw, (scene.mask_hw,))
        yield Item(relpath, 0, control.SPEC, rendered, label=SHAPE_CLASSES[label], stratum=label)
