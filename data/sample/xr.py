"""Chest X-ray (PA view: rows head to feet, image left = patient right; brightness = attenuation) with opacities,
written as 16-bit grey PNGs (chest_xray/cxr_XXX.png)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from data.sample.shapes import blur, ellipse, erode, place_lesions, smooth_noise
from data.sample.spec import Item, ModalitySpec, Slice, item_rng, lesion_counts
from data.sample.writers import write_png

SPEC = ModalitySpec("XR", "chest_xray", "opacity", "normal", category_id=3, seed_code=3)


def xray_shape(size: int) -> tuple[int, int]:
    """(H, W) of the X-ray images: portrait, so that code mixing up H and W fails."""
    return size, size - size // 8


def _xr_image(n_lesions: int, rng: np.random.Generator, size: int) -> Slice:
    h, w = shape = xray_shape(size)
    cw = w / 2 + rng.uniform(-0.03, 0.03) * w
    img = np.full(shape, rng.uniform(0.02, 0.08), np.float32)
    thorax = ellipse(shape, (0.66 * h, cw), (rng.uniform(0.56, 0.64) * h, rng.uniform(0.42, 0.48) * w))
    thorax |= ellipse(shape, (0.05 * h, cw), (0.15 * h, 0.1 * w))  # neck
    img[thorax] = rng.uniform(0.45, 0.6)

    lungs = np.zeros(shape, bool)
    lung_top, lung_h = rng.uniform(0.12, 0.2) * h, rng.uniform(0.55, 0.66) * h
    for side in (-1, 1):
        half = (lung_h / 2, rng.uniform(0.14, 0.18) * w)
        center = (lung_top + half[0], cw + side * (rng.uniform(0.06, 0.09) * w + half[1]))
        lung = ellipse(shape, center, half, side * rng.uniform(-4, 8))
        # Diaphragm dome: cut the base with a larger ellipse.
        dome = ellipse(shape, (lung_top + lung_h * 1.45, center[1]), (lung_h * 0.55, half[1] * 1.6))
        lungs |= lung & ~dome
    heart = ellipse(
        shape,
        (lung_top + 0.72 * lung_h, cw + 0.07 * w),
        (rng.uniform(0.12, 0.17) * h, rng.uniform(0.14, 0.2) * w),
        rng.uniform(-30, -10),
    )
    mediastinum = ellipse(shape, (lung_top + 0.3 * lung_h, cw), (0.4 * lung_h, 0.06 * w))
    lungs &= ~heart & ~mediastinum & thorax
    lung_level = rng.uniform(0.12, 0.25)
    vessels = np.clip(smooth_noise(rng, shape, 1.2), 0, None) * rng.uniform(0.01, 0.04)
    img[lungs] = lung_level + vessels[lungs]
    img[heart | mediastinum] = rng.uniform(0.6, 0.72)
    img[ellipse(shape, (0.5 * h, cw), (0.5 * h, 0.035 * w))] += 0.08  # spine behind the mediastinum

    ribs = np.zeros(shape, np.float32)
    thickness = max(1, int(round(0.015 * h)))
    for i in range(int(rng.integers(8, 11))):  # posterior ribs: arcs, convex upwards, falling away from the spine
        row = int(lung_top + (i + 0.8) * lung_h / 9)
        for side in (-1, 1):
            cv2.ellipse(
                ribs,
                (int(cw), row),
                (int(0.4 * w), int(rng.uniform(0.07, 0.1) * h)),
                0,
                270 if side > 0 else 180,
                360 if side > 0 else 270,
                1.0,
                thickness,
            )
    for side in (-1, 1):  # clavicles
        cv2.line(
            ribs,
            (int(cw + side * 0.05 * w), int(lung_top)),
            (int(cw + side * 0.35 * w), int(lung_top * 0.6)),
            1.3,
            thickness + 1,
        )
    img += blur(ribs, 0.8) * rng.uniform(0.05, 0.12) * thorax

    lesions = place_lesions(
        rng, erode(lungs, 1), n_lesions, (0.04 * size, 0.11 * size), irregularity=0.6, min_radius=2.5
    )
    for lesion in lesions:
        # Opacities with soft, patchy edges; strength from barely visible to dense consolidation.
        radius = math.sqrt(lesion.sum() / math.pi)
        patch = blur(lesion, max(0.8, radius / 4)) * (0.7 + 0.3 * smooth_noise(rng, shape, max(1.0, radius / 3)))
        img += np.clip(patch, 0, None) * rng.uniform(0.04, 0.3)
    img = blur(img, 0.7) ** rng.uniform(0.8, 1.25)  # detector blur and exposure curve
    img = img + rng.uniform(0.005, 0.03) * rng.standard_normal(shape).astype(np.float32)
    return Slice(np.clip(img, 0, 1).astype(np.float32), lungs, lesions)


def make_items(out: Path, n: int, seed: int, size: int) -> Iterator[Item]:
    """n radiographs, one 16-bit PNG each, at a random exposure gain."""
    counts = lesion_counts(n, seed, SPEC)
    for i in range(n):
        rng = item_rng(seed, SPEC, 0, i)
        sl = _xr_image(counts[i], rng, size)
        relpath = f"{SPEC.folder}/cxr_{i:03d}.png"
        gain = rng.uniform(20000, 62000)  # exposure / detector scaling differs between images
        write_png(out / relpath, np.clip(np.round(sl.image_hw * gain), 0, 65535).astype(np.uint16))
        yield Item(relpath, 0, SPEC, sl)
