"""Deterministic synthetic sample corpus: brain MRI (NIfTI), chest CT (DICOM), chest X-ray (16-bit PNG).

`write_sample_corpus(out, n, seed, size=...)` writes exactly `n` 2-D items per modality (so 3·n items), with
ground-truth masks, class labels, a split and COCO instances. Every random draw comes from a generator seeded by
(seed, modality, item or volume index), and DICOM UIDs are hashed from the same values, so two runs with the same
(n, seed, size) write byte-identical files. Nothing here is patient data; the DICOM patient/study tags hold
obviously fake values on purpose, so that the privacy path of the readers is exercised.

Layout (other components rely on it; the modality is inferred from the path tokens 'mri', 'ct', 'xray')::

    DIR/brain_mri/vol_000.nii.gz           int16 NIfTI volumes, 1 mm voxels, RAS-canonical affine, up to 4 slices;
                                           item image = np.asarray(img.dataobj)[:, :, k] as is (no transpose)
    DIR/chest_ct/series_000/slice_000.dcm  single-frame CT slices (uint16 stored values, HU = stored*slope + intercept)
    DIR/chest_ct/multiframe_000.dcm        one Enhanced CT multi-frame file (int16, rescale in the shared
                                           functional groups, as the standard puts it)
    DIR/chest_xray/cxr_000.png             16-bit grey PNG radiographs, (size, size - size // 8) pixels
    DIR/truth/<item_id>.png                uint8 0/255 truth at the item's (H, W): the tumour for MR,
                                           the lungs for CT and X-ray (the ROI of their prompts)
    DIR/labels.csv                         item_id,path,frame,modality,label,split
    DIR/coco/instances.json                COCO instances: one annotation per lesion (tumour / nodule / opacity)
    DIR/README.txt                         what this is
    DIR/.scanignore                        keeps truth/, coco/, labels.csv, README.txt out of `data scan`
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, ExplicitVRLittleEndian, generate_uid
from tqdm import tqdm

from data.ids import make_item_id
from data.manifest import SCANIGNORE

README_MARKER = "MWM synthetic sample corpus"
MIN_N = 3  # CT needs a multi-frame file with >= 2 frames and at least one single-frame slice
MIN_SIZE = 48
SLICES_PER_GROUP = 4  # slices per NIfTI volume / per CT series (the last groups may hold fewer)
SPLIT_FRACTIONS = (("train", 0.6), ("val", 0.2), ("test", 0.2))


@dataclass(frozen=True)
class ModalitySpec:
    """How one modality appears in the corpus: its folder, class names and COCO lesion category."""

    code: str  # 'MR' | 'CT' | 'XR', the manifest's modality code
    folder: str
    positive: str  # class name of items with >= 1 lesion; also the COCO category name
    negative: str
    category_id: int


MODALITIES = (
    ModalitySpec("MR", "brain_mri", "tumor", "no_tumor", 1),
    ModalitySpec("CT", "chest_ct", "nodule", "no_nodule", 2),
    ModalitySpec("XR", "chest_xray", "opacity", "normal", 3),
)
_SPEC = {m.code: m for m in MODALITIES}
_SEED_CODE = {"MR": 1, "CT": 2, "XR": 3}


@dataclass(frozen=True)
class SampleSummary:
    """What `write_sample_corpus` wrote."""

    root: Path
    items: dict[str, int]  # modality code -> number of 2-D items
    positives: dict[str, int]  # modality code -> items with >= 1 lesion
    annotations: int  # COCO lesion instances
    labels_csv: Path
    coco_json: Path


@dataclass(frozen=True)
class _Slice:
    """One rendered 2-D item before it is written: image, ROI truth and lesion instances."""

    image_hw: np.ndarray  # float32, modality units (MR arbitrary, CT HU, XR [0, 1])
    truth_hw: np.ndarray  # bool
    lesions: tuple[np.ndarray, ...]  # bool (H, W), one per instance, disjoint


@dataclass(frozen=True)
class _Item:
    relpath: str
    frame: int
    modality: ModalitySpec
    rendered: _Slice = field(repr=False)

    @property
    def item_id(self) -> str:
        return make_item_id(self.relpath, self.frame)

    @property
    def positive(self) -> bool:
        return len(self.rendered.lesions) > 0


# ----------------------------------------------------------------------------------------------------------------
# Random fields and shapes


def _rng(seed: int, modality: str, kind: int, index: int) -> np.random.Generator:
    """Generator for one item (kind 0) or one volume/series (kind 1): independent of the order of generation."""
    return np.random.default_rng([seed, _SEED_CODE[modality], kind, index])


def _smooth_noise(rng: np.random.Generator, shape_hw: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Gaussian-filtered white noise with zero mean and unit std."""
    noise_hw = rng.standard_normal(shape_hw).astype(np.float32)
    field_hw = cv2.GaussianBlur(noise_hw, (0, 0), sigmaX=max(sigma_px, 0.3), borderType=cv2.BORDER_REFLECT)
    return (field_hw - field_hw.mean()) / (field_hw.std() + 1e-6)


def _blur(img_hw: np.ndarray, sigma_px: float) -> np.ndarray:
    return cv2.GaussianBlur(img_hw.astype(np.float32), (0, 0), sigmaX=max(sigma_px, 0.3))


def _ellipse(
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


def _erode(mask_hw: np.ndarray, radius_px: int) -> np.ndarray:
    if radius_px <= 0:
        return mask_hw.copy()
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius_px + 1, 2 * radius_px + 1))
    return cv2.erode(mask_hw.astype(np.uint8), kernel).astype(bool)


def _dilate(mask_hw: np.ndarray, radius_px: int) -> np.ndarray:
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius_px + 1, 2 * radius_px + 1))
    return cv2.dilate(mask_hw.astype(np.uint8), kernel).astype(bool)


def _place_lesions(
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
            inner = _erode(allowed_hw, reach) & ~_dilate(taken, reach + 2)
            candidates = np.flatnonzero(inner)
            if candidates.size == 0:
                continue
            r, c = np.unravel_index(candidates[rng.integers(candidates.size)], allowed_hw.shape)
            blob = _blob(allowed_hw.shape, (float(r), float(c)), radius, rng, irregularity)
            if blob.sum() >= 4 and not (blob & ~allowed_hw).any() and not (blob & _dilate(taken, 2)).any():
                lesions.append(blob)
                taken |= blob
                break
        else:
            if lesions:  # a second lesion does not fit in a small image: keep one
                break
            raise RuntimeError("could not place a lesion inside its region; increase --size")
    return tuple(lesions)


# ----------------------------------------------------------------------------------------------------------------
# Brain MRI


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
        bias_hw=np.exp(rng.uniform(0.05, 0.35) * _smooth_noise(rng, (size, size), size / 4)),
    )


def _mr_slice(vol: _MrVolume, k: int, n_lesions: int, rng: np.random.Generator, size: int) -> _Slice:
    shape = (size, size)
    shrink = 1.0 - 0.04 * k  # the head narrows towards the vertex
    half = (vol.head_half_rc[0] * shrink, vol.head_half_rc[1] * shrink)
    scalp_w, skull_w = 0.035 * size, 0.03 * size
    head = _ellipse(shape, vol.center_rc, half, vol.angle_deg)
    inner = _ellipse(shape, vol.center_rc, (half[0] - scalp_w, half[1] - scalp_w), vol.angle_deg)
    brain = _ellipse(shape, vol.center_rc, (half[0] - scalp_w - skull_w, half[1] - scalp_w - skull_w), vol.angle_deg)
    # Ventricles: two elongated ellipses left and right of the midline (rows run left-right in RAS).
    vent = np.zeros(shape, bool)
    v_half = (rng.uniform(0.02, 0.045) * size, rng.uniform(0.08, 0.14) * size * shrink)
    for side in (-1, 1):
        center = (vol.center_rc[0] + side * rng.uniform(0.035, 0.06) * size, vol.center_rc[1] + rng.uniform(-2, 2))
        vent |= _ellipse(shape, center, v_half, vol.angle_deg + side * rng.uniform(5, 20))
    white = (_smooth_noise(rng, shape, size / 18) > rng.uniform(-0.6, 0.2)) & _erode(brain, max(2, size // 32))

    scalp, skull, csf, grey, wm = (0.6, 0.05, 0.95, 0.55, 0.42) if vol.t2 else (0.9, 0.08, 0.15, 0.45, 0.62)
    img = np.zeros(shape, np.float32)
    img[head & ~inner] = scalp
    img[inner & ~brain] = skull
    img[brain] = grey
    img[white] = wm
    img[vent & brain] = csf
    img = _blur(img, 0.8) * (1 + rng.uniform(0.02, 0.08) * _smooth_noise(rng, shape, size / 40))

    lesions = _place_lesions(
        rng, _erode(brain, 2), n_lesions, (0.035 * size, 0.12 * size), irregularity=0.5, min_radius=3.0
    )
    for lesion in lesions:
        # Contrast from faint to obvious, either sign; texture inside; some with a bright rim (T1 enhancement).
        strength = rng.uniform(0.04, 0.1) if rng.random() < 0.2 else rng.uniform(0.12, 0.38)
        contrast = strength * (1 if vol.t2 or rng.random() < 0.4 else -1)
        soft = _blur(lesion, rng.uniform(0.5, 1.5))
        img += soft * contrast * (1 + 0.4 * _smooth_noise(rng, shape, 1.5))
        if not vol.t2 and rng.random() < 0.35:
            rim = lesion & ~_erode(lesion, max(1, size // 64))
            img += _blur(rim, 0.7) * rng.uniform(0.08, 0.22)
    img = img * vol.bias_hw
    # Rician noise, as in magnitude MR images.
    img = np.hypot(img + vol.noise * rng.standard_normal(shape), vol.noise * rng.standard_normal(shape))
    truth = np.zeros(shape, bool)
    for lesion in lesions:
        truth |= lesion
    return _Slice((img * vol.gain).astype(np.float32), truth, lesions)


# ----------------------------------------------------------------------------------------------------------------
# Chest CT (Hounsfield units; rows run anterior to posterior, columns patient right to left, as displayed)


@dataclass(frozen=True)
class _CtSeries:
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


def _ct_slice(ser: _CtSeries, k: int, n_lesions: int, rng: np.random.Generator, size: int) -> _Slice:
    shape = (size, size)
    cr, cc = ser.center_rc
    body = _ellipse(shape, ser.center_rc, ser.body_half_rc)
    muscle = _ellipse(shape, ser.center_rc, (ser.body_half_rc[0] - ser.fat_px, ser.body_half_rc[1] - ser.fat_px))
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
        lungs |= _ellipse(shape, center, half, side * rng.uniform(0, 12))
    heart = _ellipse(shape, (cr - 0.02 * size, cc + 0.05 * size), (0.11 * size, 0.09 * size), 30)
    lungs &= ~heart & _erode(muscle, 2)
    hu[lungs] = ser.lung_hu + 25 * _smooth_noise(rng, shape, size / 30)[lungs]
    hu[heart & ~lungs] = 35.0
    hu[_ellipse(shape, (cr + 0.06 * size, cc - 0.035 * size), (0.03 * size, 0.03 * size))] = 45.0  # aorta
    spine_c = (cr + ser.body_half_rc[0] - 0.11 * size, cc)
    hu[_ellipse(shape, spine_c, (0.055 * size, 0.06 * size))] = 700.0
    hu[_ellipse(shape, spine_c, (0.04 * size, 0.045 * size))] = 250.0
    for t in np.linspace(0.15, np.pi - 0.15, int(rng.integers(8, 13))):  # ribs along the chest wall
        for side in (-1, 1):
            rc = (
                cr - math.cos(t) * (ser.body_half_rc[0] - ser.fat_px - 0.02 * size),
                cc + side * math.sin(t) * (ser.body_half_rc[1] - ser.fat_px - 0.02 * size),
            )
            hu[_ellipse(shape, rc, (0.018 * size, 0.012 * size), rng.uniform(0, 180))] = rng.uniform(500, 900)
    # Vessels: small bright dots inside the lungs, the structures nodules must be told apart from.
    lung_px = np.flatnonzero(lungs)
    for idx in rng.choice(lung_px, size=min(lung_px.size, int(rng.integers(10, 40))), replace=False):
        r, c = np.unravel_index(idx, shape)
        vessel = _ellipse(shape, (float(r), float(c)), (rng.uniform(0.4, 1.3),) * 2) & lungs
        hu[vessel] = rng.uniform(-400, 20)

    lesions = _place_lesions(rng, lungs, n_lesions, (0.02 * size, 0.07 * size), irregularity=0.35, min_radius=2.0)
    for lesion in lesions:
        # Solid nodules (obvious) or ground-glass ones (faint, only ~100-350 HU above the lung).
        level = rng.uniform(-150, 60) if rng.random() < 0.55 else ser.lung_hu + rng.uniform(100, 350)
        soft = _blur(lesion, rng.uniform(0.4, 1.0))
        hu = hu * (1 - soft) + soft * (level + 30 * _smooth_noise(rng, shape, 1.0))
    hu = _blur(hu, 0.6) + ser.noise_hu * rng.standard_normal(shape).astype(np.float32)
    return _Slice(hu.astype(np.float32), lungs, lesions)


# ----------------------------------------------------------------------------------------------------------------
# Chest X-ray (PA view: rows head to feet, image left = patient right; brightness = attenuation)


def xray_shape(size: int) -> tuple[int, int]:
    """(H, W) of the X-ray images: portrait, so that code mixing up H and W fails."""
    return size, size - size // 8


def _xr_image(n_lesions: int, rng: np.random.Generator, size: int) -> _Slice:
    h, w = shape = xray_shape(size)
    cw = w / 2 + rng.uniform(-0.03, 0.03) * w
    img = np.full(shape, rng.uniform(0.02, 0.08), np.float32)
    thorax = _ellipse(shape, (0.66 * h, cw), (rng.uniform(0.56, 0.64) * h, rng.uniform(0.42, 0.48) * w))
    thorax |= _ellipse(shape, (0.05 * h, cw), (0.15 * h, 0.1 * w))  # neck
    img[thorax] = rng.uniform(0.45, 0.6)

    lungs = np.zeros(shape, bool)
    lung_top, lung_h = rng.uniform(0.12, 0.2) * h, rng.uniform(0.55, 0.66) * h
    for side in (-1, 1):
        half = (lung_h / 2, rng.uniform(0.14, 0.18) * w)
        center = (lung_top + half[0], cw + side * (rng.uniform(0.06, 0.09) * w + half[1]))
        lung = _ellipse(shape, center, half, side * rng.uniform(-4, 8))
        # Diaphragm dome: cut the base with a larger ellipse.
        dome = _ellipse(shape, (lung_top + lung_h * 1.45, center[1]), (lung_h * 0.55, half[1] * 1.6))
        lungs |= lung & ~dome
    heart = _ellipse(
        shape,
        (lung_top + 0.72 * lung_h, cw + 0.07 * w),
        (rng.uniform(0.12, 0.17) * h, rng.uniform(0.14, 0.2) * w),
        rng.uniform(-30, -10),
    )
    mediastinum = _ellipse(shape, (lung_top + 0.3 * lung_h, cw), (0.4 * lung_h, 0.06 * w))
    lungs &= ~heart & ~mediastinum & thorax
    lung_level = rng.uniform(0.12, 0.25)
    vessels = np.clip(_smooth_noise(rng, shape, 1.2), 0, None) * rng.uniform(0.01, 0.04)
    img[lungs] = lung_level + vessels[lungs]
    img[heart | mediastinum] = rng.uniform(0.6, 0.72)
    img[_ellipse(shape, (0.5 * h, cw), (0.5 * h, 0.035 * w))] += 0.08  # spine behind the mediastinum

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
    img += _blur(ribs, 0.8) * rng.uniform(0.05, 0.12) * thorax

    lesions = _place_lesions(
        rng, _erode(lungs, 1), n_lesions, (0.04 * size, 0.11 * size), irregularity=0.6, min_radius=2.5
    )
    for lesion in lesions:
        # Opacities with soft, patchy edges; strength from barely visible to dense consolidation.
        radius = math.sqrt(lesion.sum() / math.pi)
        patch = _blur(lesion, max(0.8, radius / 4)) * (0.7 + 0.3 * _smooth_noise(rng, shape, max(1.0, radius / 3)))
        img += np.clip(patch, 0, None) * rng.uniform(0.04, 0.3)
    img = _blur(img, 0.7) ** rng.uniform(0.8, 1.25)  # detector blur and exposure curve
    img = img + rng.uniform(0.005, 0.03) * rng.standard_normal(shape).astype(np.float32)
    return _Slice(np.clip(img, 0, 1).astype(np.float32), lungs, lesions)


# ----------------------------------------------------------------------------------------------------------------
# Writers


def _group_sizes(total: int, per_group: int) -> list[int]:
    """Split `total` slices into ceil(total / per_group) groups of near-equal size."""
    groups = -(-total // per_group)
    return [total // groups + (1 if g < total % groups else 0) for g in range(groups)]


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _write_png(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"{path}: cv2.imwrite failed")


def _write_nifti(path: Path, vol_hwk: np.ndarray) -> None:
    """int16 volume with a 1 mm RAS affine; gzip with mtime 0 so that reruns are byte-identical."""
    affine = np.eye(4)
    affine[:3, 3] = -(np.array(vol_hwk.shape) - 1) / 2  # world origin at the volume centre
    img = nib.Nifti1Image(vol_hwk, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header["descrip"] = b"MWM synthetic sample"
    _write_bytes(path, gzip.compress(img.to_bytes(), compresslevel=6, mtime=0))


@dataclass(frozen=True)
class _CtUids:
    """Deterministic DICOM UIDs for one corpus, hashed from the generator arguments."""

    seed: int
    n: int
    size: int

    def uid(self, *parts: object) -> str:
        return generate_uid(entropy_srcs=["mwm-sample", str(self.seed), str(self.n), str(self.size), *map(str, parts)])


def _ct_dataset(
    uids: _CtUids, sop_class: str, sop_instance: str, series_key: str, series_number: int, size: int
) -> Dataset:
    """Patient/study/series/equipment modules shared by every CT file (fake but plausible identifiers)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.PatientName = "SAMPLE^SYNTHETIC"
    ds.PatientID = "SYN-0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = uids.uid("study")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = "SYN0001"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = "NOBODY^SYNTHETIC"
    ds.InstitutionName = "MWM SYNTHETIC SAMPLE"
    ds.StudyDescription = "SYNTHETIC CHEST CT"
    ds.Modality = "CT"
    ds.SeriesInstanceUID = uids.uid("series", series_key)
    ds.SeriesNumber = series_number
    ds.SeriesDescription = f"synthetic {series_key}"
    ds.FrameOfReferenceUID = uids.uid("frame-of-reference", series_key)
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "MWM sample generator"
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "HFS"
    ds.KVP = 120
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    return ds


def _ct_geometry(size: int, z_mm: float) -> tuple[list[float], list[float], list[float]]:
    """(ImagePositionPatient, ImageOrientationPatient, PixelSpacing) for a 350 mm axial field of view."""
    spacing = 350.0 / size
    return [-175.0, -175.0, z_mm], [1.0, 0.0, 0.0, 0.0, 1.0, 0.0], [spacing, spacing]


CT_INTERCEPT = -1024.0
CT_SLICE_MM = 2.5


def _hu_to_stored(hu: np.ndarray, slope: float, dtype: type) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.clip(np.round((hu - CT_INTERCEPT) / slope), max(info.min, 0), info.max).astype(dtype)


def _write_ct_slice(path: Path, hu_hw: np.ndarray, uids: _CtUids, series: int, k: int, slope: float) -> None:
    """Single-frame CT Image Storage; uint16 stored values, HU = stored * slope + intercept."""
    key = f"series_{series:03d}"
    ds = _ct_dataset(uids, CTImageStorage, uids.uid("instance", key, k), key, series + 1, hu_hw.shape[0])
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceNumber = k + 1
    z = -k * CT_SLICE_MM
    ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing = _ct_geometry(hu_hw.shape[0], z)
    ds.SliceLocation = z
    ds.SliceThickness = CT_SLICE_MM
    ds.RescaleIntercept = CT_INTERCEPT
    ds.RescaleSlope = slope
    ds.RescaleType = "HU"
    ds.WindowCenter, ds.WindowWidth = -600, 1500
    stored = _hu_to_stored(hu_hw, slope, np.uint16)
    ds.set_pixel_data(stored, "MONOCHROME2", 16 if slope < 1 else 12, generate_instance_uid=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _write_ct_multiframe(path: Path, hu_fhw: np.ndarray, uids: _CtUids, series_number: int) -> None:
    """Enhanced CT Image Storage: int16 frames, geometry and rescale in the functional group sequences."""
    key = "multiframe_000"
    ds = _ct_dataset(uids, EnhancedCTImageStorage, uids.uid("instance", key), key, series_number, hu_fhw.shape[1])
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.InstanceNumber = 1
    _, orientation, spacing = _ct_geometry(hu_fhw.shape[1], 0.0)
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([Dataset()])
    shared.PixelMeasuresSequence[0].PixelSpacing = spacing
    shared.PixelMeasuresSequence[0].SliceThickness = CT_SLICE_MM
    shared.PlaneOrientationSequence = Sequence([Dataset()])
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = orientation
    shared.PixelValueTransformationSequence = Sequence([Dataset()])
    shared.PixelValueTransformationSequence[0].RescaleIntercept = CT_INTERCEPT
    shared.PixelValueTransformationSequence[0].RescaleSlope = 1.0
    shared.PixelValueTransformationSequence[0].RescaleType = "HU"
    shared.FrameVOILUTSequence = Sequence([Dataset()])
    shared.FrameVOILUTSequence[0].WindowCenter = -600
    shared.FrameVOILUTSequence[0].WindowWidth = 1500
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for f in range(hu_fhw.shape[0]):
        item = Dataset()
        item.PlanePositionSequence = Sequence([Dataset()])
        item.PlanePositionSequence[0].ImagePositionPatient = _ct_geometry(hu_fhw.shape[1], -f * CT_SLICE_MM)[0]
        item.FrameContentSequence = Sequence([Dataset()])
        item.FrameContentSequence[0].StackID = "1"
        item.FrameContentSequence[0].InStackPositionNumber = f + 1
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.set_pixel_data(_hu_to_stored(hu_fhw, 1.0, np.int16), "MONOCHROME2", 16, generate_instance_uid=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


# ----------------------------------------------------------------------------------------------------------------
# Items per modality (each generator renders and writes its files, then yields the items it wrote)


def _lesion_counts(n: int, seed: int, modality: str) -> list[int]:
    """0 lesions for n - n // 2 items, 1 or 2 (30 %) for the n // 2 positives; positions shuffled by the seed."""
    rng = _rng(seed, modality, 2, 0)
    counts = np.zeros(n, int)
    positives = rng.permutation(n)[: n // 2]
    counts[positives] = np.where(rng.random(positives.size) < 0.3, 2, 1)
    return counts.tolist()


def _mr_items(out: Path, n: int, seed: int, size: int) -> Iterator[_Item]:
    spec, counts, i = _SPEC["MR"], _lesion_counts(n, seed, "MR"), 0
    for v, depth in enumerate(_group_sizes(n, SLICES_PER_GROUP)):
        vol = _mr_volume(_rng(seed, "MR", 1, v), size)
        relpath = f"{spec.folder}/vol_{v:03d}.nii.gz"
        slices = [_mr_slice(vol, k, counts[i + k], _rng(seed, "MR", 0, i + k), size) for k in range(depth)]
        data_hwk = np.stack([s.image_hw for s in slices], axis=-1)
        _write_nifti(out / relpath, np.clip(np.round(data_hwk), 0, np.iinfo(np.int16).max).astype(np.int16))
        for k, s in enumerate(slices):
            yield _Item(relpath, k, spec, s)
        i += depth


def _ct_items(out: Path, n: int, seed: int, size: int) -> Iterator[_Item]:
    spec, counts, uids = _SPEC["CT"], _lesion_counts(n, seed, "CT"), _CtUids(seed, n, size)
    n_multi = max(2, n // 4)
    groups = _group_sizes(n - n_multi, SLICES_PER_GROUP)
    i = 0
    for s, depth in enumerate(groups):
        ser = _ct_series(_rng(seed, "CT", 1, s), size)
        slope = 0.5 if s % 2 else 1.0  # odd series exercise a non-unit rescale slope
        for k in range(depth):
            sl = _ct_slice(ser, k, counts[i], _rng(seed, "CT", 0, i), size)
            relpath = f"{spec.folder}/series_{s:03d}/slice_{k:03d}.dcm"
            _write_ct_slice(out / relpath, sl.image_hw, uids, s, k, slope)
            yield _Item(relpath, 0, spec, sl)
            i += 1
    ser = _ct_series(_rng(seed, "CT", 1, len(groups)), size)
    frames = [_ct_slice(ser, f, counts[i + f], _rng(seed, "CT", 0, i + f), size) for f in range(n_multi)]
    relpath = f"{spec.folder}/multiframe_000.dcm"
    _write_ct_multiframe(out / relpath, np.stack([f.image_hw for f in frames]), uids, len(groups) + 1)
    for f, sl in enumerate(frames):
        yield _Item(relpath, f, spec, sl)


def _xr_items(out: Path, n: int, seed: int, size: int) -> Iterator[_Item]:
    spec, counts = _SPEC["XR"], _lesion_counts(n, seed, "XR")
    for i in range(n):
        rng = _rng(seed, "XR", 0, i)
        sl = _xr_image(counts[i], rng, size)
        relpath = f"{spec.folder}/cxr_{i:03d}.png"
        gain = rng.uniform(20000, 62000)  # exposure / detector scaling differs between images
        _write_png(out / relpath, np.clip(np.round(sl.image_hw * gain), 0, 65535).astype(np.uint16))
        yield _Item(relpath, 0, spec, sl)


# ----------------------------------------------------------------------------------------------------------------
# Labels, splits, COCO


def _splits(items: list[_Item], seed: int) -> list[str]:
    """Stratified by (modality, label): shuffle each stratum, then cut it 60/20/20 into train/val/test."""
    splits = [""] * len(items)
    strata: dict[tuple[str, bool], list[int]] = {}
    for idx, item in enumerate(items):
        strata.setdefault((item.modality.code, item.positive), []).append(idx)
    for (code, positive), members in sorted(strata.items()):
        order = _rng(seed, code, 3, int(positive)).permutation(len(members))
        for rank, j in enumerate(order):
            q, edge = (rank + 0.5) / len(members), 0.0
            for name, fraction in SPLIT_FRACTIONS:
                edge += fraction
                if q < edge or name == SPLIT_FRACTIONS[-1][0]:
                    splits[members[j]] = name
                    break
    return splits


def _polygons(mask_hw: np.ndarray) -> list[list[float]]:
    """Outer contours as COCO polygons [x0, y0, x1, y1, ...] (pixel centres); the box outline for sliver masks."""
    contours, _ = cv2.findContours(mask_hw.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = [[float(v) for v in c.reshape(-1)] for c in contours if len(c) >= 3]
    if not polygons:
        x, y, w, h = cv2.boundingRect(mask_hw.astype(np.uint8))
        polygons = [
            [
                float(x),
                float(y),
                float(x + w - 1),
                float(y),
                float(x + w - 1),
                float(y + h - 1),
                float(x),
                float(y + h - 1),
            ]
        ]
    return polygons


def _coco(items: list[_Item]) -> dict:
    images, annotations = [], []
    for image_id, item in enumerate(items, start=1):
        h, w = item.rendered.truth_hw.shape
        images.append(
            {
                "id": image_id,
                "file_name": item.relpath,
                "height": h,
                "width": w,
                "frame": item.frame,
                "item_id": item.item_id,
                "modality": item.modality.code,
            }
        )
        for lesion in item.rendered.lesions:
            x, y, bw, bh = cv2.boundingRect(lesion.astype(np.uint8))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": item.modality.category_id,
                    "bbox": [x, y, bw, bh],
                    "area": int(lesion.sum()),
                    "iscrowd": 0,
                    "segmentation": _polygons(lesion),
                }
            )
    categories = [{"id": m.category_id, "name": m.positive, "supercategory": "lesion"} for m in MODALITIES]
    info = {"description": f"{README_MARKER} (synthetic, no patient data)", "version": "1"}
    return {"info": info, "licenses": [], "images": images, "annotations": annotations, "categories": categories}


def _readme(n: int, seed: int, size: int) -> str:
    h, w = xray_shape(size)
    return f"""{README_MARKER}
{"=" * len(README_MARKER)}

Synthetic images made by `python -m data sample` (data/sample.py) with n={n}, seed={seed}, size={size}.
No patient data: every image is drawn from simple shapes and noise. The DICOM patient/study tags hold fake
values ('SAMPLE^SYNTHETIC', 'SYN-0001', ...) so that tools which must drop such tags have something to drop.
The same arguments always give byte-identical files.

Layout ({n} 2-D items per modality):
  brain_mri/vol_XXX.nii.gz            int16 NIfTI, {size}x{size}x(<= {SLICES_PER_GROUP}) voxels of 1 mm, RAS affine.
                                      Item (path, k) is the slice np.asarray(img.dataobj)[:, :, k], not transposed.
  chest_ct/series_XXX/slice_XXX.dcm   single-frame CT ({size}x{size}), uint16 stored values,
                                      HU = stored * RescaleSlope + RescaleIntercept (-1024; odd series use slope 0.5)
  chest_ct/multiframe_000.dcm         Enhanced CT, several frames, int16; rescale in
                                      SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
  chest_xray/cxr_XXX.png              16-bit grey PNG, {h}x{w} (H x W)
  truth/<item_id>.png                 uint8 0/255 mask at the item's size: the tumour (MR; empty when none),
                                      the lungs (CT, X-ray). Masks, not images: skip this folder when scanning.
  labels.csv                          item_id,path,frame,modality,label,split
                                      labels: tumor/no_tumor (MR), nodule/no_nodule (CT), opacity/normal (XR)
  coco/instances.json                 COCO instances, one annotation per lesion (categories tumor, nodule, opacity);
                                      images carry file_name (= path), frame and item_id

item_id = data.ids.make_item_id(path, frame); frame = slice index (NIfTI), frame index (multi-frame DICOM), else 0.
"""


def _clear_previous(out: Path) -> None:
    """Allow rewriting a folder only when it is empty or holds a previous sample corpus (of which we remove ours)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise NotADirectoryError(f"{out}: exists and is not a folder")
    readme = out / "README.txt"
    if readme.is_file() and readme.read_text(errors="replace").startswith(README_MARKER):
        for name in [m.folder for m in MODALITIES] + ["truth", "coco"]:
            shutil.rmtree(out / name, ignore_errors=True)
        for name in ("labels.csv", "README.txt", SCANIGNORE):
            (out / name).unlink(missing_ok=True)
    elif any(out.iterdir()):
        raise FileExistsError(f"{out}: folder is not empty and holds no sample corpus; choose a new or empty folder")


def write_sample_corpus(
    out: Path, n: int = 12, seed: int = 0, *, size: int = 128, progress: bool = False
) -> SampleSummary:
    """Write the sample corpus into `out` and return what was written.

    Exactly `n` 2-D items per modality: MR slices in ceil(n/4) volumes; CT as max(2, n//4) frames of one multi-frame
    file plus the rest as single-frame slices in series of <= 4; n X-ray PNGs. n // 2 items per modality carry 1 or
    2 lesions. The output depends only on (n, seed, size) (`seed` >= 0, n >= 3, size >= 48). `out` must be new,
    empty, or hold an earlier sample corpus, whose files are replaced.
    """
    out = Path(out)
    if n < MIN_N:
        raise ValueError(f"n must be >= {MIN_N} (got {n})")
    if size < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE} (got {size})")
    if seed < 0:
        raise ValueError(f"seed must be >= 0 (got {seed})")
    _clear_previous(out)
    out.mkdir(parents=True, exist_ok=True)

    makers: list[Callable[[Path, int, int, int], Iterator[_Item]]] = [_mr_items, _ct_items, _xr_items]
    items: list[_Item] = []
    with tqdm(total=3 * n, desc="sample corpus", unit="img", disable=not progress) as bar:
        for make in makers:
            for item in make(out, n, seed, size):
                _write_png(out / "truth" / f"{item.item_id}.png", item.rendered.truth_hw.astype(np.uint8) * 255)
                items.append(item)
                bar.update(1)

    splits = _splits(items, seed)
    labels_csv = out / "labels.csv"
    with labels_csv.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["item_id", "path", "frame", "modality", "label", "split"])
        for item, split in zip(items, splits, strict=True):
            label = item.modality.positive if item.positive else item.modality.negative
            writer.writerow([item.item_id, item.relpath, item.frame, item.modality.code, label, split])
    coco = _coco(items)
    coco_json = out / "coco" / "instances.json"
    _write_bytes(coco_json, json.dumps(coco).encode())
    (out / "README.txt").write_text(_readme(n, seed, size))
    # Annotations live beside the images; `data scan` must not take them for corpus images.
    (out / SCANIGNORE).write_text("truth/\ncoco/\nlabels.csv\nREADME.txt\n")

    return SampleSummary(
        root=out,
        items={m.code: sum(i.modality is m for i in items) for m in MODALITIES},
        positives={m.code: sum(i.modality is m and i.positive for i in items) for m in MODALITIES},
        annotations=len(coco["annotations"]),
        labels_csv=labels_csv,
        coco_json=coco_json,
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m data sample --out DIR [--n N] [--seed S] [--size PX]`."""
    parser = argparse.ArgumentParser(prog="python -m data sample", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write (new, empty, or an earlier sample)")
    parser.add_argument("--n", type=int, default=12, help="2-D items per modality (default 12, at least 3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", type=int, default=128, help="image size in pixels (default 128, at least 48)")
    args = parser.parse_args(argv)
    try:
        summary = write_sample_corpus(args.out, args.n, args.seed, size=args.size, progress=True)
    except (ValueError, FileExistsError, NotADirectoryError) as err:
        parser.exit(2, f"error: {err}\n")
    counts = ", ".join(f"{code} {k} ({summary.positives[code]} with lesions)" for code, k in summary.items.items())
    print(f"sample corpus in {summary.root}: {counts}; {summary.annotations} lesion annotations")
    print(f"  labels: {summary.labels_csv}\n  COCO:   {summary.coco_json}\n  truth:  {summary.root / 'truth'}")
    print(f"  about:  {summary.root / 'README.txt'}")
    return 0
