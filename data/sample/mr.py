"""Brain MRI: T1- or T2-like axial slices with tumours, written as int16 NIfTI volumes (brain_mri/vol_XXX.nii.gz)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.sample.shapes import blur, ellipse, erode, place_lesions, smooth_noise
from data.sample.spec import SLICES_PER_GROUP, Anatomy, Item, ModalitySpec, Slice, group_sizes, item_rng, lesion_counts
from data.sample.writers import write_nifti

SPEC = ModalitySpec("MR", "brain_mri", "tumor", "no_tumor", category_id=1, seed_code=1)


@dataclass(frozen=True)
class _MrVolume:
    """Anatomy and acquisition shared by the slices of one volume."""

    center_rc: tuple[float, float]
    head_half_rc: tuple[float, float]
    angle_deg: float
    t2: bool  # T2-like contrast (CSF bright) instead of T1-like (CSF dark)
    gain: float
    noise: float
    bias_hw: np.ndarray


def _mr_volume(rng: np.random.Generator, size: int) -> _MrVolume:
    jitter = 0.04 * size
    return _MrVolume(
        center_rc=(size / 2 + rng.uniform(-jitter, jitter), size / 2 + rng.uniform(-jitter, jitter)),
        head_half_rc=(rng.uniform(0.33, 0.40) * size, rng.uniform(0.39, 0.44) * size),
        angle_deg=rng.uniform(-12, 12),
        t2=bool(rng.random() < 0.5),
        gain=rng.uniform(400, 3000),
        noise=rng.uniform(0.01, 0.06),
        bias_hw=np.exp(rng.uniform(0.05, 0.35) * smooth_noise(rng, (size, size), size / 4)),
    )


def _mr_slice(
    vol: _MrVolume,
    k: float,
    n_lesions: int,
    rng: np.random.Generator,
    size: int,
    lesions: tuple[np.ndarray, ...] | None = None,
) -> Slice:
    """One slice; `lesions` given (the volumes corpus' tumour sections) replaces the `n_lesions` random ones."""
    shape = (size, size)
    shrink = 1.0 - 0.04 * k  # the head narrows towards the vertex
    half = (vol.head_half_rc[0] * shrink, vol.head_half_rc[1] * shrink)
    scalp_w, skull_w = 0.035 * size, 0.03 * size
    head = ellipse(shape, vol.center_rc, half, vol.angle_deg)
    inner = ellipse(shape, vol.center_rc, (half[0] - scalp_w, half[1] - scalp_w), vol.angle_deg)
    brain = ellipse(shape, vol.center_rc, (half[0] - scalp_w - skull_w, half[1] - scalp_w - skull_w), vol.angle_deg)
    # Ventricles: two elongated ellipses left and right of the midline (rows run left-right in RAS).
    vent = np.zeros(shape, bool)
    v_half = (rng.uniform(0.02, 0.045) * size, rng.uniform(0.08, 0.14) * size * shrink)
    for side in (-1, 1):
        center = (vol.center_rc[0] + side * rng.uniform(0.035, 0.06) * size, vol.center_rc[1] + rng.uniform(-2, 2))
        vent |= ellipse(shape, center, v_half, vol.angle_deg + side * rng.uniform(5, 20))
    white = (smooth_noise(rng, shape, size / 18) > rng.uniform(-0.6, 0.2)) & erode(brain, max(2, size // 32))

    scalp, skull, csf, grey, wm = (0.6, 0.05, 0.95, 0.55, 0.42) if vol.t2 else (0.9, 0.08, 0.15, 0.45, 0.62)
    img = np.zeros(shape, np.float32)
    img[head & ~inner] = scalp
    img[inner & ~brain] = skull
    img[brain] = grey
    img[white] = wm
    img[vent & brain] = csf
    img = blur(img, 0.8) * (1 + rng.uniform(0.02, 0.08) * smooth_noise(rng, shape, size / 40))

    if lesions is None:
        lesions = place_lesions(
            rng, erode(brain, 2), n_lesions, (0.035 * size, 0.12 * size), irregularity=0.5, min_radius=3.0
        )
    for lesion in lesions:
        # Contrast from faint to obvious, either sign; texture inside; some with a bright rim (T1 enhancement).
        strength = rng.uniform(0.04, 0.1) if rng.random() < 0.2 else rng.uniform(0.12, 0.38)
        contrast = strength * (1 if vol.t2 or rng.random() < 0.4 else -1)
        soft = blur(lesion, rng.uniform(0.5, 1.5))
        img += soft * contrast * (1 + 0.4 * smooth_noise(rng, shape, 1.5))
        if not vol.t2 and rng.random() < 0.35:
            rim = lesion & ~erode(lesion, max(1, size // 64))
            img += blur(rim, 0.7) * rng.uniform(0.08, 0.22)
    img = img * vol.bias_hw
    # Rician noise, as in magnitude MR images.
    img = np.hypot(img + vol.noise * rng.standard_normal(shape), vol.noise * rng.standard_normal(shape))
    truth = np.zeros(shape, bool)
    for lesion in lesions:
        truth |= lesion
    return Slice((img * vol.gain).astype(np.float32), truth, lesions, Anatomy(vol.center_rc, half, vol.angle_deg))


def make_items(out: Path, n: int, seed: int, size: int) -> Iterator[Item]:
    """n slices in volumes of <= SLICES_PER_GROUP, one NIfTI file each; item (path, k) is slice k."""
    counts, i = lesion_counts(n, seed, SPEC), 0
    for v, depth in enumerate(group_sizes(n, SLICES_PER_GROUP)):
        vol = _mr_volume(item_rng(seed, SPEC, 1, v), size)
        relpath = f"{SPEC.folder}/vol_{v:03d}.nii.gz"
        slices = [_mr_slice(vol, k, counts[i + k], item_rng(seed, SPEC, 0, i + k), size) for k in range(depth)]
        data_hwk = np.stack([s.image_hw for s in slices], axis=-1)
        write_nifti(out / relpath, np.clip(np.round(data_hwk), 0, np.iinfo(np.int16).max).astype(np.int16))
        for k, s in enumerate(slices):
            yield Item(relpath, k, SPEC, s)
        i += depth
