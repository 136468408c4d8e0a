"""Random fields and shapes the modalities draw with: smooth noise, ellipses, lesions placed inside a region."""

from __future__ import annotations

import math

import cv2
import numpy as np


def smooth_noise(rng: np.random.Generator, shape_hw: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Gaussian-filtered white noise with zero mean and unit std."""
    noise_hw = rng.standard_normal(shape_hw).astype(np.float32)
    field_hw = cv2.GaussianBlur(noise_hw, (0, 0), sigmaX=max(sigma_px, 0.3), borderType=cv2.BORDER_REFLECT)
    return (field_hw - field_hw.mean()) / (field_hw.std() + 1e-6)


def blur(img_hw: np.ndarray, sigma_px: float) -> np.ndarray:
    return cv2.GaussianBlur(img_hw.astype(np.float32), (0, 0), sigmaX=max(sigma_px, 0.3))


def ellipse(
    shape_hw: tuple[int, int], center_rc: tuple[float, float], half_rc: tuple[float, float], angle_deg: float = 0.0
) -> np.ndarray:
    """Filled ellipse (bool) with half-axes along rows/cols before rotating by `angle_deg`."""
    rr, cc = np.mgrid[: shape_hw[0], : shape_hw[1]].astype(np.float32)
    t = math.radians(angle_deg)
    dr, dc = rr - center_rc[0], cc - center_rc[1]
    u = dr * math.cos(t) - dc * math.sin(t)
    v = dr * math.sin(t) + dc * math.cos(t)
    return (u / half_rc[0]) ** 2 + (v / half_rc[1]) ** 2 <= 1.0


def _blob(
    shape_hw: tuple[int, int],
    center_rc: tuple[float, float],
    radius: float,
    rng: np.random.Generator,
    irregularity: float,
) -> np.ndarray:
    """Star-shaped lesion: a disc whose radius wobbles with angle; largest 8-connected component only."""
    rr, cc = np.mgrid[: shape_hw[0], : shape_hw[1]].astype(np.float32)
    dr, dc = rr - center_rc[0], cc - center_rc[1]
    theta = np.arctan2(dr, dc)
    wobble = np.ones_like(theta)
    for k in (2, 3, 4):
        wobble += rng.uniform(0, irregularity / 3) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    mask = np.hypot(dr, dc) <= radius * wobble
    n_cc, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    if n_cc > 2:
        sizes = np.bincount(labels.ravel())[1:]
        mask = labels == 1 + int(np.argmax(sizes))
    return mask


def erode(mask_hw: np.ndarray, radius_px: int) -> np.ndarray:
    if radius_px <= 0:
        return mask_hw.copy()
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius_px + 1, 2 * radius_px + 1))
    return cv2.erode(mask_hw.astype(np.uint8), kernel).astype(bool)


def dilate(mask_hw: np.ndarray, radius_px: int) -> np.ndarray:
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius_px + 1, 2 * radius_px + 1))
    return cv2.dilate(mask_hw.astype(np.uint8), kernel).astype(bool)


def place_lesions(
    rng: np.random.Generator,
    allowed_hw: np.ndarray,
    count: int,
    radius_range: tuple[float, float],
    irregularity: float,
    min_radius: float,
) -> tuple[np.ndarray, ...]:
    """Up to `count` (at least one when count > 0) disjoint blobs lying wholly inside `allowed_hw`.

    The radius shrinks towards `min_radius` when a blob does not fit; only in small images can a second blob fail.
    """
    lesions: list[np.ndarray] = []
    taken = np.zeros_like(allowed_hw)
    for _ in range(count):
        radius = max(rng.uniform(*radius_range), min_radius)
        for attempt in range(60):
            if attempt and attempt % 15 == 0:
                radius = max(radius * 0.7, min_radius)
            reach = int(math.ceil(radius * (1 + irregularity)))  # the blob's largest possible radius
            inner = erode(allowed_hw, reach) & ~dilate(taken, reach + 2)
            candidates = np.flatnonzero(inner)
            if candidates.size == 0:
                continue
            r, c = np.unravel_index(candidates[rng.integers(candidates.size)], allowed_hw.shape)
            blob = _blob(allowed_hw.shape, (float(r), float(c)), radius, rng, irregularity)
            if blob.sum() >= 4 and not (blob & ~allowed_hw).any() and not (blob & dilate(taken, 2)).any():
                lesions.append(blob)
                taken |= blob
                break
        else:
            if lesions:  # a second lesion does not fit in a small image: keep one
                break
            raise RuntimeError("could not place a lesion inside its region; increase --size")
    return tuple(lesions)
