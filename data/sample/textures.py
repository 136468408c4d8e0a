"""The positive control's lesion textures: four classes that differ only in how many orientations they combine.

Every class is a sum of cosine gratings of one spatial period `period_px`: 'stripes' one grating, 'grid' two at
90 degrees, 'hex' three at 60 degrees (a lattice of spots), 'maze' many at random orientations (isotropic
band-pass noise). The base orientation and the phases are random, and each field is scaled to zero mean and
unit standard deviation, so the classes share their radial frequency, mean and contrast: what tells them
apart is the angular structure of the pattern, which a feature has to look at the texture itself to see.
"""

from __future__ import annotations

import math

import numpy as np

TEXTURE_CLASSES = ("stripes", "grid", "hex", "maze")
MAZE_WAVES = 24  # gratings summed for the isotropic class


def _orientations(kind: str, base_rad: float, rng: np.random.Generator) -> np.ndarray:
    if kind == "stripes":
        return np.array([base_rad])
    if kind == "grid":
        return base_rad + np.array([0.0, math.pi / 2])
    if kind == "hex":
        return base_rad + np.array([0.0, math.pi / 3, 2 * math.pi / 3])
    if kind == "maze":
        return rng.uniform(0, math.pi, MAZE_WAVES)
    raise ValueError(f"unknown texture class {kind!r}; expected one of {TEXTURE_CLASSES}")


def texture_field(kind: str, shape_hw: tuple[int, int], period_px: float, rng: np.random.Generator) -> np.ndarray:
    """A (H, W) float32 field of texture class `kind`: gratings of period `period_px` at the class's
    orientations (random base angle, random phases), scaled to zero mean and unit std over the field."""
    orientations = _orientations(kind, float(rng.uniform(0, math.pi)), rng)
    phases = rng.uniform(0, 2 * math.pi, orientations.size)
    rows, cols = np.mgrid[: shape_hw[0], : shape_hw[1]].astype(np.float32)
    k = 2 * math.pi / period_px
    field_hw = np.zeros(shape_hw, np.float32)
    for angle, phase in zip(orientations, phases, strict=True):
        field_hw += np.cos(k * (cols * math.cos(angle) + rows * math.sin(angle)) + phase).astype(np.float32)
    return (field_hw - field_hw.mean()) / (field_hw.std() + 1e-6)
