"""The positive control for the masking study: the class lies only inside a lesion, the background is loud but useless.

Each item is a 96 px (by default) grey image made of two independent parts (`Scene`):
- a background drawn from its own seeded stream, never from the class: a brightness ramp, 3-6 large flat
  shapes (ellipses, rectangles) at random grey levels with sharp edges, 1-3 thick arcs, low-frequency mottling
  and grain: large, high-contrast structure that a reconstruction objective spends effort on;
- one lesion: an irregular blob (13-21 px radius at 96 px) at a random place, at a random grey level, filled
  with one of four textures (`data.sample.textures`: stripes, grid, hex, maze) at a random period (4.5-7 px),
  orientation and contrast, plus its own grain. Its shape, place, level and contrast come from a stream that
  does not depend on the class; only the texture does.
The image is the background outside the lesion mask and the lesion inside it (no blending), so the pixels
outside the ROI are the same whatever the class, and the truth mask is exactly the drawn region.

Written as 8-bit PNGs under `texture_lesions/`, modality 'OT' (no path token names one), one class per item,
classes balanced; the split (train/val/test 60/10/30, stratified by class) and the pretraining manifest
(every item but the test split) are written by `data.sample.corpus` (mode 'control').
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from data.sample.shapes import ellipse, erode, place_lesions, smooth_noise
from data.sample.spec import Item, ModalitySpec, Slice, item_rng
from data.sample.textures import TEXTURE_CLASSES, texture_field
from data.sample.writers import write_png

SPEC = ModalitySpec("OT", "texture_lesions", "lesion", "", category_id=1, seed_code=7)
RADIUS_RANGE = (0.14, 0.22)  # lesion radius, fraction of the image side
PERIOD_RANGE_PX = (4.5, 7.0)  # texture period, pixels (fixed whatever the image size: the texture is fine)
# the item's random streams (data.sample.spec.item_rng kinds): the class never enters the background or region
BACKGROUND_STREAM, REGION_STREAM, TEXTURE_STREAM, CLASS_STREAM = 0, 4, 5, 2


@dataclass(frozen=True)
class Scene:
    """One item before it is written: background, lesion mask and lesion content (float32 (H, W) in [0, 1])."""

    background_hw: np.ndarray
    mask_hw: np.ndarray  # bool, the lesion (= the ROI truth)
    lesion_hw: np.ndarray  # the lesion's pixels (only those under the mask are used)
    label: int  # index into TEXTURE_CLASSES

    @property
    def image_hw(self) -> np.ndarray:
        return compose(self.background_hw, self.mask_hw, self.lesion_hw)


def compose(background_hw: np.ndarray, mask_hw: np.ndarray, lesion_hw: np.ndarray) -> np.ndarray:
    """The image: the lesion's pixels under the mask, the background's elsewhere."""
    return np.where(mask_hw, lesion_hw, background_hw).astype(np.float32)


def draw_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Large, high-contrast, class-free structure: ramp, flat shapes, arcs, mottling, grain; (size, size) in [0, 1]."""
    shape = (size, size)
    rows, cols = np.mgrid[:size, :size].astype(np.float32) / size - 0.5
    angle = rng.uniform(0, 2 * math.pi)
    img = rng.uniform(0.3, 0.6) + rng.uniform(0.2, 0.5) * (cols * math.cos(angle) + rows * math.sin(angle))
    img = img.astype(np.float32)
    for _ in range(int(rng.integers(3, 7))):
        center = tuple(rng.uniform(0, size, 2))
        half = tuple(rng.uniform(0.1, 0.4, 2) * size)
        tilt = rng.uniform(0, 180)
        if rng.random() < 0.5:
            region = ellipse(shape, center, half, tilt)
        else:
            box = cv2.boxPoints(((center[1], center[0]), (2 * half[1], 2 * half[0]), tilt))
            region = cv2.fillPoly(np.zeros(shape, np.uint8), [np.round(box).astype(np.int32)], 1).astype(bool)
        img[region] = rng.uniform(0.0, 1.0)
    arcs = np.zeros(shape, np.float32)
    for _ in range(int(rng.integers(1, 4))):
        center = (int(rng.uniform(-0.2, 1.2) * size), int(rng.uniform(-0.2, 1.2) * size))
        axes = (int(rng.uniform(0.3, 0.8) * size), int(rng.uniform(0.2, 0.6) * size))
        start = rng.uniform(0, 360)
        level = rng.uniform(-0.4, 0.4)
        thickness = int(rng.integers(3, 7))
        cv2.ellipse(arcs, center, axes, rng.uniform(0, 180), start, start + rng.uniform(60, 160), level, thickness)
    img += arcs
    img += rng.uniform(0.02, 0.06) * smooth_noise(rng, shape, size / 12)
    img += rng.uniform(0.01, 0.03) * rng.standard_normal(shape).astype(np.float32)
    return np.clip(img, 0, 1).astype(np.float32)


def draw_region(rng: np.random.Generator, size: int) -> tuple[np.ndarray, float, float, float]:
    """The lesion's mask, grey level, texture contrast (std) and grain, all class-free."""
    radius = (RADIUS_RANGE[0] * size, RADIUS_RANGE[1] * size)
    inside = erode(np.ones((size, size), bool), 2)
    (mask_hw,) = place_lesions(rng, inside, 1, radius, irregularity=0.3, min_radius=radius[0] * 0.7)
    return mask_hw, float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.06, 0.12)), float(rng.uniform(0.01, 0.03))


def draw_lesion(region_rng: np.random.Generator, texture_rng: np.random.Generator, label: int, size: int):
    """(mask, lesion pixels): the class-free region filled with texture class `label`."""
    mask_hw, level, contrast, grain = draw_region(region_rng, size)
    period = float(texture_rng.uniform(*PERIOD_RANGE_PX))
    texture_hw = texture_field(TEXTURE_CLASSES[label], (size, size), period, texture_rng)
    noise_hw = texture_rng.standard_normal((size, size)).astype(np.float32)
    lesion_hw = np.clip(level + contrast * texture_hw + grain * noise_hw, 0, 1).astype(np.float32)
    return mask_hw, lesion_hw


def class_labels(n: int, seed: int) -> list[int]:
    """n labels, the four classes as equal as n allows, in a seeded order."""
    rng = item_rng(seed, SPEC, CLASS_STREAM, 0)
    return (np.arange(n) % len(TEXTURE_CLASSES))[rng.permutation(n)].tolist()


def render_scene(seed: int, index: int, size: int, label: int) -> Scene:
    """Item `index`'s background and lesion region (fixed by (seed, index)) with texture class `label`."""
    background_hw = draw_background(item_rng(seed, SPEC, BACKGROUND_STREAM, index), size)
    mask_hw, lesion_hw = draw_lesion(
        item_rng(seed, SPEC, REGION_STREAM, index), item_rng(seed, SPEC, TEXTURE_STREAM, index), label, size
    )
    return Scene(background_hw, mask_hw, lesion_hw, label)


def make_items(out: Path, n: int, seed: int, size: int) -> Iterator[Item]:
    """n images, one 8-bit PNG each, with their class."""
    for i, label in enumerate(class_labels(n, seed)):
        scene = render_scene(seed, i, size, label)
        relpath = f"{SPEC.folder}/img_{i:05d}.png"
        write_png(out / relpath, np.round(scene.image_hw * 255).astype(np.uint8))
        rendered = Slice(scene.image_hw, scene.mask_hw, (scene.mask_hw,))
        yield Item(relpath, 0, SPEC, rendered, label=TEXTURE_CLASSES[label], stratum=label)
