"""Label volumes as per-slice masks: NIfTI label volumes and DICOM SEG objects matched to image slices by geometry.

A label volume says where its voxels lie in the patient (NIfTI: the affine; SEG: each frame's ImagePositionPatient
with the shared ImageOrientationPatient and PixelSpacing); so does every image slice (its DICOM header, or its NIfTI
affine with the reader's canonical slicing, `data.readers.nifti`). Slice z of an image gets the label pixels at the
same points: no resampling, only axis permutations and flips, so the grids must match. A slice is refused, naming
the label file, the image and the reason, when the in-plane axes are not the label's up to a flip ("orientation
differs"), when the pixel size differs ("spacing differs"), when the label has no slice at the image slice's position
("no label slice at ..."), or when the slice's pixels fall outside the label grid ("in-plane grid differs").

SEG objects store only the frames a segment occupies (the standard allows leaving empty frames out), so an image
slice without a SEG frame at its position gets an empty mask; a SEG frame at no image slice's position is refused.
Values: a NIfTI label volume's voxel values as stored (0 background); a SEG pixel the number of its segment (the
highest where segments overlap), so a binary reader (non-zero = ROI) sees the union of the segments.

Which label volume belongs to which images is a CSV (`read_label_volume_list`) with columns `label` (the label file,
relative to the CSV's folder) and `images` (a corpus-relative file or folder: every manifest item in it).
"""

from __future__ import annotations

import hashlib
import secrets
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from data.hashing import update_with_file

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # NIfTI world coordinates are RAS+, DICOM's LPS+
_STEP_TOLERANCE = 1e-3  # relative: an in-plane step must be one label voxel along one label axis
_INDEX_TOLERANCE = 1e-2  # voxels: how far off a whole index a position may be


class LabelGridMismatch(ValueError):
    """A label volume whose grid does not match an image slice's; str() is '<label file>: <reason> (<image>)'."""


@dataclass(frozen=True)
class SliceGrid:
    """Where an image slice's pixels lie (LPS mm): pixel (r, c) at origin + r * row_step + c * col_step."""

    origin: np.ndarray
    row_step: np.ndarray  # one row down: along the column cosines, PixelSpacing[0] mm
    col_step: np.ndarray  # one column right: along the row cosines, PixelSpacing[1] mm
    shape: tuple[int, int]


@dataclass(frozen=True)
class _Plan:
    """Which label voxels make an image slice: index `fixed` on axis `fixed_axis`, rows from `row_start` stepping
    `row_sign` along `row_axis`, columns likewise."""

    fixed_axis: int
    fixed: int
    row_axis: int
    row_start: int
    row_sign: int
    col_axis: int
    col_start: int
    col_sign: int
    shape: tuple[int, int]

    def take(self, block: np.ndarray) -> np.ndarray:
        """The (H, W) slice of a 3-D label array."""
        index: list = [0, 0, 0]
        index[self.fixed_axis] = self.fixed
        index[self.row_axis] = (self.row_start + self.row_sign * np.arange(self.shape[0]))[:, None]
        index[self.col_axis] = (self.col_start + self.col_sign * np.arange(self.shape[1]))[None, :]
        return block[tuple(index)]


@dataclass(frozen=True)
class LabelSlice:
    """The label of one image slice: `parts` (SEG frame or 0 for NIfTI, segment number or 0, plan); no parts = empty."""

    path: Path
    kind: str  # 'nifti' | 'seg'
    parts: tuple[tuple[int, int, _Plan], ...]
    shape: tuple[int, int]


def _locate(inverse: np.ndarray, shape: Sequence[int], grid: SliceGrid) -> tuple[_Plan | None, str, str]:
    """(plan, '', '') when `grid` lies on the label grid whose LPS affine has the inverse `inverse` and shape `shape`;
    else (None, kind, reason) with kind 'orientation' | 'spacing' | 'position' | 'in-plane'."""
    start = inverse @ np.append(grid.origin, 1.0)
    axes, signs = [], []
    for step, name in ((grid.row_step, "row"), (grid.col_step, "column")):
        d = inverse[:3, :3] @ step
        axis = int(np.argmax(np.abs(d)))
        off = np.delete(d, axis)
        if np.abs(off).max() > _STEP_TOLERANCE * max(1.0, abs(d[axis])):
            return None, "orientation", f"orientation differs (the image's {name} axis is along no label axis)"
        if abs(abs(d[axis]) - 1.0) > _STEP_TOLERANCE:
            label_mm = float(np.linalg.norm(step)) / abs(d[axis])
            image_mm = float(np.linalg.norm(step))
            return (
                None,
                "spacing",
                f"spacing differs ({name} step {image_mm:.4g} mm in the image, {label_mm:.4g} mm in the label)",
            )
        axes.append(axis)
        signs.append(int(np.sign(d[axis])))
    if axes[0] == axes[1]:
        return None, "orientation", "orientation differs (rows and columns along the same label axis)"
    fixed_axis = 3 - axes[0] - axes[1]
    fixed = float(start[fixed_axis])
    if abs(fixed - round(fixed)) > _INDEX_TOLERANCE or not 0 <= round(fixed) < shape[fixed_axis]:
        return (
            None,
            "position",
            f"no label slice at the image slice's position (label index {fixed:.3g} on axis {fixed_axis})",
        )
    starts = [float(start[a]) for a in axes]
    ends = [s + sign * (n - 1) for s, sign, n in zip(starts, signs, grid.shape, strict=True)]
    whole = all(abs(v - round(v)) <= _INDEX_TOLERANCE for v in starts)
    inside = all(0 <= round(v) < shape[a] for v, a in zip(starts + ends, axes + axes, strict=True))
    if not (whole and inside):
        return (
            None,
            "in-plane",
            (
                f"in-plane grid differs (the image's {grid.shape[0]}x{grid.shape[1]} pixels start at label voxel "
                f"{[round(v, 2) for v in starts]} of a {shape[axes[0]]}x{shape[axes[1]]} label plane)"
            ),
        )
    plan = _Plan(
        fixed_axis, round(fixed), axes[0], round(starts[0]), signs[0], axes[1], round(starts[1]), signs[1], grid.shape
    )
    return plan, "", ""


class LabelVolume:
    """One NIfTI label volume or DICOM SEG object, read once (headers and voxels)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: label volume not found")
        name = self.path.name.lower()
        self.kind = "nifti" if name.endswith((".nii", ".nii.gz")) else "seg"
        if self.kind == "nifti":
            self._read_nifti()
        else:
            self._read_seg()
        self.inverses = [np.linalg.inv(a) for a in self.affines]  # world -> voxel, once

    def _read_nifti(self) -> None:
        import nibabel as nib

        try:
            image = nib.load(str(self.path))
            data = np.asanyarray(image.dataobj)
        except Exception as err:  # noqa: BLE001 - any reader failure becomes one message naming the file
            raise ValueError(f"{self.path}: cannot read as a NIfTI label volume ({type(err).__name__})") from err
        if data.ndim > 3 and any(n != 1 for n in data.shape[3:]):
            raise ValueError(f"{self.path}: a label volume must be 3-D, this one is {data.shape}")
        data = data.reshape(data.shape[:3] + (1,) * max(0, 3 - data.ndim))
        if data.dtype.kind == "f" and not np.array_equal(data, np.round(data)):
            raise ValueError(f"{self.path}: label values must be whole numbers")
        self.arrays = [data if data.dtype.kind in "iub" else data.astype(np.int32)]  # uint8 stays uint8
        self.affines = [LPS_FROM_RAS @ np.asarray(image.affine, dtype=float)]
        self.segments = [0]

    def _read_seg(self) -> None:
        import pydicom

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(self.path)
            sop_class = str(ds.get("SOPClassUID", ""))
            if sop_class != SEG_SOP_CLASS:
                raise ValueError(f"SOP class {sop_class or 'missing'}, not Segmentation Storage")
            frames = ds.pixel_array
            shared = ds.SharedFunctionalGroupsSequence[0]
            cosines = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
            spacing = np.array(shared.PixelMeasuresSequence[0].PixelSpacing, dtype=float)
            per_frame = ds.PerFrameFunctionalGroupsSequence
            positions = [np.array(f.PlanePositionSequence[0].ImagePositionPatient, float) for f in per_frame]
            segments = [int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber) for f in per_frame]
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{self.path}: not a readable DICOM SEG ({err})") from err
        frames = frames.reshape((-1, *frames.shape[-2:]))
        if len(frames) != len(positions):
            raise ValueError(f"{self.path}: {len(frames)} frames but {len(positions)} per-frame positions")
        row_cos, col_cos = cosines[:3], cosines[3:]
        normal = np.cross(row_cos, col_cos)
        self.arrays, self.affines, self.segments = [], [], segments
        for frame, position in zip(frames, positions, strict=True):
            affine = np.eye(4)
            affine[:3, 0], affine[:3, 1], affine[:3, 2] = col_cos * spacing[0], row_cos * spacing[1], normal
            affine[:3, 3] = position
            self.arrays.append(np.asarray(frame)[:, :, None])
            self.affines.append(affine)

    def match(self, grid: SliceGrid, image: str) -> LabelSlice:
        """The label of the image slice `grid` (named `image` in errors); LabelGridMismatch when the grids differ."""
        located = [_locate(a, block.shape, grid) for a, block in zip(self.inverses, self.arrays, strict=True)]
        parts = tuple((i, self.segments[i], plan) for i, (plan, _, _) in enumerate(located) if plan is not None)
        if self.kind == "nifti" and not parts:
            raise LabelGridMismatch(f"{self.path}: {located[0][2]} ({image})")
        if self.kind == "seg" and not parts:  # no frame here: empty, unless the frames lie on another grid
            problems = [(kind, reason) for _, kind, reason in located if kind != "position"]
            if problems:
                raise LabelGridMismatch(f"{self.path}: {problems[0][1]} ({image})")
        return LabelSlice(self.path, self.kind, parts, grid.shape)

    def read(self, label: LabelSlice) -> np.ndarray:
        """The (H, W) int32 label of a slice `match` returned."""
        out = np.zeros(label.shape, np.int32)
        for index, segment, plan in label.parts:
            values = plan.take(self.arrays[index]).astype(np.int32)
            out = np.where(values != 0, segment if self.kind == "seg" else values, out)
        return out


# ------------------------------------------------------------------------------------------ image slice geometry
def image_grids(corpus: str | Path, path: str, frames: Sequence[int], shape_hw: tuple[int, int]) -> list[SliceGrid]:
    """The grids of `frames` (of `shape_hw` pixels, the manifest's) of the corpus file `path` (DICOM or NIfTI, as the
    readers slice them); ValueError naming the file when it has no geometry (a raster image, a DICOM without
    ImagePositionPatient)."""
    full = Path(corpus) / path
    name = path.lower()
    if name.endswith((".nii", ".nii.gz")):
        return _nifti_grids(full, frames, shape_hw)
    if name.endswith((".png", ".jpg", ".jpeg", ".tif", ".tiff")):
        raise ValueError(f"{full}: a raster image has no position in the patient to match a label volume to")
    return _dicom_grids(full, frames, shape_hw)


def _dicom_grids(path: Path, frames: Sequence[int], shape_hw: tuple[int, int]) -> list[SliceGrid]:
    from data.keys import CorpusKey
    from data.readers.geometry import dicom_geometry

    # a throwaway key: dicom_geometry hashes the identity tags, which are not used here
    geometry = dicom_geometry(path, CorpusKey(secrets.token_bytes(32)))
    grids = []
    for frame in frames:
        position = geometry.positions[frame] if frame < len(geometry.positions) else None
        cosines = geometry.orientations[frame] if frame < len(geometry.orientations) else None
        if position is None or cosines is None or geometry.spacing_rc is None:
            raise ValueError(
                f"{path}: frame {frame} lacks ImagePositionPatient, ImageOrientationPatient or PixelSpacing"
            )
        cosines = np.asarray(cosines, float)
        grids.append(
            SliceGrid(
                np.asarray(position, float),
                cosines[3:] * geometry.spacing_rc[0],
                cosines[:3] * geometry.spacing_rc[1],
                shape_hw,
            )
        )
    return grids


def _nifti_grids(path: Path, frames: Sequence[int], shape_hw: tuple[int, int]) -> list[SliceGrid]:
    """Frame f is canonical (RAS+) slice f mod nz, pixel (r, c) = canonical voxel (r, c, z) (`data.readers.nifti`)."""
    import nibabel as nib

    image = nib.load(str(path))
    shape = tuple(int(n) for n in image.shape[:3]) + (1,) * max(0, 3 - len(image.shape))
    ornt = nib.orientations.io_orientation(image.affine)
    if np.isnan(ornt).any():
        ornt = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    canonical = LPS_FROM_RAS @ image.affine @ nib.orientations.inv_ornt_aff(ornt, shape)
    canonical_shape = [shape[int(np.flatnonzero(ornt[:, 0] == a)[0])] for a in range(3)]
    nz = canonical_shape[2]
    return [
        SliceGrid(
            canonical[:3, :3] @ [0.0, 0.0, float(f % nz)] + canonical[:3, 3],
            canonical[:3, 0].copy(),
            canonical[:3, 1].copy(),
            shape_hw,
        )
        for f in frames
    ]


# ------------------------------------------------------------------------------------------ a corpus' label volumes
def read_label_volume_list(csv_path: str | Path) -> pd.DataFrame:
    """The CSV of label volumes: columns `label` (made absolute, relative to the CSV's folder) and `images`."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: label volume list not found")
    table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    missing = [c for c in ("label", "images") if c not in table.columns]
    if missing:
        raise ValueError(f"{csv_path}: missing column(s) {missing}; have {list(table.columns)}")
    table["label"] = [str(p if Path(p).is_absolute() else csv_path.parent / p) for p in table["label"]]
    table["images"] = [PurePosixPath(p.strip()).as_posix().strip("/") for p in table["images"]]
    return table[["label", "images"]]


class CorpusLabels:
    """Per-item masks of a corpus from the label volumes of a list (`read_label_volume_list`), matched by geometry.

    `labels[i]` is the LabelSlice of manifest row i (absent: no label volume covers its file). Matching reads every
    covered image's header and every label volume; a mismatch raises LabelGridMismatch at once.
    """

    def __init__(self, csv_path: str | Path, corpus: str | Path, manifest: pd.DataFrame) -> None:
        self.csv_path = Path(csv_path)
        listing = read_label_volume_list(csv_path)
        manifest = manifest.reset_index(drop=True)
        self._manifest = manifest
        paths = manifest["path"].astype(str).to_numpy()
        self.volumes: dict[str, LabelVolume] = {}
        self.labels: dict[int, LabelSlice] = {}
        self._volume_of: dict[int, str] = {}
        for label_path, images in zip(listing["label"], listing["images"], strict=True):
            rows = [i for i, p in enumerate(paths) if p == images or p.startswith(images + "/")]
            if not rows:
                raise ValueError(f"{self.csv_path}: {images}: no manifest item in it (for {label_path})")
            volume = self.volumes.setdefault(label_path, LabelVolume(label_path))
            self._match(volume, corpus, manifest, rows)
        self._check_seg_frames_used()

    def _match(self, volume: LabelVolume, corpus: str | Path, manifest: pd.DataFrame, rows: list[int]) -> None:
        for path, group in manifest.iloc[rows].groupby("path", sort=False):
            frames = group["frame"].astype(int).tolist()
            shape_hw = (int(group["height"].iloc[0]), int(group["width"].iloc[0]))
            grids = image_grids(corpus, str(path), frames, shape_hw)
            for row, frame, grid in zip(group.index, frames, grids, strict=True):
                if int(row) in self.labels:
                    raise ValueError(f"{self.csv_path}: {path} (frame {frame}) is covered by two label volumes")
                self.labels[int(row)] = volume.match(grid, f"{path} frame {frame}")
                self._volume_of[int(row)] = str(volume.path)

    def _check_seg_frames_used(self) -> None:
        """A SEG frame that no image slice took lies off the series' grid: refused."""
        used: dict[str, set[int]] = {}
        for label in self.labels.values():
            used.setdefault(str(label.path), set()).update(index for index, _, _ in label.parts)
        for path, volume in self.volumes.items():
            if volume.kind != "seg":
                continue
            unused = sorted(set(range(len(volume.arrays))) - used.get(str(volume.path), set()))
            if unused:
                position = volume.affines[unused[0]][:3, 3]
                raise LabelGridMismatch(
                    f"{path}: no image slice at the position of frame {unused[0] + 1} "
                    f"({', '.join(f'{v:.4g}' for v in position)} mm)"
                )

    def table(self) -> pd.DataFrame:
        """The covered manifest rows (its columns) with `mask_row` (the row) and `mask_path` (the label file)."""
        rows = sorted(self.labels)
        table = self._manifest.iloc[rows].copy()
        table["mask_row"] = rows
        table["mask_path"] = [self._volume_of[r] for r in rows]
        return table.reset_index(drop=True)

    def mask(self, row: int) -> np.ndarray | None:
        """The (H, W) int32 label of manifest row `row`, None where no label volume covers it."""
        label = self.labels.get(int(row))
        return None if label is None else self.volumes[self._volume_of[int(row)]].read(label)

    def digest(self) -> str:
        """SHA-256 over the list and every label file (a cache's provenance)."""
        digest = hashlib.sha256()
        update_with_file(digest, self.csv_path)
        for path in sorted(self.volumes):
            digest.update(Path(path).name.encode() + b"\0")
            update_with_file(digest, Path(path))
        return digest.hexdigest()
