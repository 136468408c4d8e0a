"""Chest CT in Hounsfield units with lung nodules: single-frame series and one Enhanced CT multi-frame file.

Rows run anterior to posterior, columns patient right to left, as displayed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.sample.ct_dicom import CtUids, slice_positions, write_ct_extras, write_ct_multiframe, write_ct_slice
from data.sample.shapes import blur, ellipse, erode, place_lesions, smooth_noise
from data.sample.spec import SLICES_PER_GROUP, Item, ModalitySpec, Slice, group_sizes, item_rng, lesion_counts

SPEC = ModalitySpec("CT", "chest_ct", "nodule", "no_nodule", category_id=2, seed_code=2)


@dataclass(frozen=True)
class _CtSeries:
    """Body habitus, lungs and acquisition shared by the slices of one series."""

    center_rc: tuple[float, float]
    body_half_rc: tuple[float, float]
    fat_px: float
    lung_half_rc: tuple[float, float]
    lung_offset: float
    lung_hu: float
    noise_hu: float
    table: bool


def _ct_series(rng: np.random.Generator, size: int) -> _CtSeries:
    return _CtSeries(
        center_rc=(size * rng.uniform(0.46, 0.52), size * rng.uniform(0.47, 0.53)),
        body_half_rc=(rng.uniform(0.27, 0.33) * size, rng.uniform(0.39, 0.45) * size),
        fat_px=rng.uniform(0.01, 0.045) * size,
        lung_half_rc=(rng.uniform(0.16, 0.21) * size, rng.uniform(0.12, 0.16) * size),
        lung_offset=rng.uniform(0.17, 0.21) * size,
        lung_hu=rng.uniform(-900, -760),
        noise_hu=rng.uniform(8, 45),
        table=bool(rng.random() < 0.6),
    )


def _ct_slice(
    ser: _CtSeries, k: float, n_lesions: int, rng: np.random.Generator, size: int, with_lungs: bool = True
) -> Slice:
    """One slice; `with_lungs=False` draws a slice above or below the lungs (the volumes corpus' ends)."""
    shape = (size, size)
    cr, cc = ser.center_rc
    body = ellipse(shape, ser.center_rc, ser.body_half_rc)
    muscle = ellipse(shape, ser.center_rc, (ser.body_half_rc[0] - ser.fat_px, ser.body_half_rc[1] - ser.fat_px))
    hu = np.full(shape, -1000.0, np.float32)
    hu[body] = -100.0
    hu[muscle] = 40.0
    if ser.table:
        row = min(size - 2, int(cr + ser.body_half_rc[0] + 0.03 * size))
        hu[row : row + max(1, size // 64), int(0.1 * size) : int(0.9 * size)] = 150.0

    lungs = np.zeros(shape, bool)
    scale = 1.0 + 0.05 * (k - 1.5) + rng.uniform(-0.03, 0.03)  # lung section changes along the series
    for side in (-1, 1):
        center = (cr - 0.02 * size + rng.uniform(-1, 1), cc + side * ser.lung_offset)
        half = (ser.lung_half_rc[0] * scale, ser.lung_half_rc[1] * scale * rng.uniform(0.92, 1.05))
        lungs |= ellipse(shape, center, half, side * rng.uniform(0, 12))
    heart = ellipse(shape, (cr - 0.02 * size, cc + 0.05 * size), (0.11 * size, 0.09 * size), 30)
    lungs &= ~heart & erode(muscle, 2) & with_lungs
    hu[lungs] = ser.lung_hu + 25 * smooth_noise(rng, shape, size / 30)[lungs]
    hu[heart & ~lungs] = 35.0
    hu[ellipse(shape, (cr + 0.06 * size, cc - 0.035 * size), (0.03 * size, 0.03 * size))] = 45.0  # aorta
    spine_c = (cr + ser.body_half_rc[0] - 0.11 * size, cc)
    hu[ellipse(shape, spine_c, (0.055 * size, 0.06 * size))] = 700.0
    hu[ellipse(shape, spine_c, (0.04 * size, 0.045 * size))] = 250.0
    for t in np.linspace(0.15, np.pi - 0.15, int(rng.integers(8, 13))):  # ribs along the chest wall
        for side in (-1, 1):
            rc = (
                cr - math.cos(t) * (ser.body_half_rc[0] - ser.fat_px - 0.02 * size),
                cc + side * math.sin(t) * (ser.body_half_rc[1] - ser.fat_px - 0.02 * size),
            )
            hu[ellipse(shape, rc, (0.018 * size, 0.012 * size), rng.uniform(0, 180))] = rng.uniform(500, 900)
    # Vessels: small bright dots inside the lungs, the structures nodules must be told apart from.
    lung_px = np.flatnonzero(lungs)
    for idx in rng.choice(lung_px, size=min(lung_px.size, int(rng.integers(10, 40))), replace=False):
        r, c = np.unravel_index(idx, shape)
        vessel = ellipse(shape, (float(r), float(c)), (rng.uniform(0.4, 1.3),) * 2) & lungs
        hu[vessel] = rng.uniform(-400, 20)

    lesions = place_lesions(rng, lungs, n_lesions, (0.02 * size, 0.07 * size), irregularity=0.35, min_radius=2.0)
    for lesion in lesions:
        # Solid nodules (obvious) or ground-glass ones (faint, only ~100-350 HU above the lung).
        level = rng.uniform(-150, 60) if rng.random() < 0.55 else ser.lung_hu + rng.uniform(100, 350)
        soft = blur(lesion, rng.uniform(0.4, 1.0))
        hu = hu * (1 - soft) + soft * (level + 30 * smooth_noise(rng, shape, 1.0))
    hu = blur(hu, 0.6) + ser.noise_hu * rng.standard_normal(shape).astype(np.float32)
    return Slice(hu.astype(np.float32), lungs, lesions)


def make_items(out: Path, n: int, seed: int, size: int) -> Iterator[Item]:
    """Single-frame series of <= SLICES_PER_GROUP slices (each a patient, slice positions shuffled against the file
    names), then one multi-frame file of max(2, n // 4) frames, and the three excluded extras (not items)."""
    counts, uids = lesion_counts(n, seed, SPEC), CtUids(seed, n, size)
    n_multi = max(2, n // 4)
    groups = group_sizes(n - n_multi, SLICES_PER_GROUP)
    i = 0
    for s, depth in enumerate(groups):
        ser = _ct_series(item_rng(seed, SPEC, 1, s), size)
        slope = 0.5 if s % 2 else 1.0  # odd series exercise a non-unit rescale slope
        ranks = slice_positions(depth, seed, s)
        for k in range(depth):
            sl = _ct_slice(ser, k, counts[i], item_rng(seed, SPEC, 0, i), size)
            relpath = f"{SPEC.folder}/series_{s:03d}/slice_{k:03d}.dcm"
            write_ct_slice(out / relpath, sl.image_hw, uids, s, k, slope, rank=ranks[k])
            if s == 0 and k == 0:
                write_ct_extras(out / SPEC.folder, sl.image_hw, uids)
            yield Item(relpath, 0, SPEC, sl, patient=f"{SPEC.folder}/series_{s:03d}")
            i += 1
    ser = _ct_series(item_rng(seed, SPEC, 1, len(groups)), size)
    frames = [_ct_slice(ser, f, counts[i + f], item_rng(seed, SPEC, 0, i + f), size) for f in range(n_multi)]
    relpath = f"{SPEC.folder}/multiframe_000.dcm"
    write_ct_multiframe(out / relpath, np.stack([f.image_hw for f in frames]), uids, len(groups) + 1)
    for f, sl in enumerate(frames):
        yield Item(relpath, f, SPEC, sl)
