"""Image readers: DICOM, NIfTI, PNG/JPEG/TIFF files -> 2-D frames in physical units.

One file holds one or more 2-D frames: a DICOM frame, a NIfTI axial slice (of each volume), a TIFF page.
`iter_frames` yields every frame of a file (the scan uses it), `read_frame` reads one efficiently (the
datasets use it), `load_image` adds intensity normalisation and is the one entry point to a model-ready image.

Privacy: DICOM files are read with pydicom's `specific_tags`, so only the Modality tag and the pixel-module
tags are ever parsed; no patient or study value reaches a Frame, a log or an error message.
"""

from __future__ import annotations

import os
import re
import struct
import warnings
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from data.intensity import IntensityConfig, normalize

SUPPORTED_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom", ".nii", ".nii.gz", ".png", ".jpg", ".jpeg", ".tif", ".tiff")
MODALITIES: tuple[str, ...] = ("CT", "MR", "XR", "MG", "US", "OT")
NiftiVolumes = Literal["all", "first"]

_FORMAT_BY_SUFFIX = {
    ".dcm": "dicom",
    ".dicom": "dicom",
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".tif": "tiff",
    ".tiff": "tiff",
}
# DICOM Modality codes -> our normalised modality; codes not listed become 'OT'.
_DICOM_MODALITY = {
    "CT": "CT",
    "MR": "MR",
    "CR": "XR",
    "DX": "XR",
    "DR": "XR",
    "RG": "XR",
    "RF": "XR",
    "XA": "XR",
    "PX": "XR",
    "XR": "XR",
    "MG": "MG",
    "US": "US",
    "IVUS": "US",
}
# Objects that carry pixel data but are not images to pretrain on (label maps, dose grids).
_NON_IMAGE_MODALITIES = frozenset({"SEG", "RTDOSE", "RTSTRUCT", "RTPLAN", "RTIMAGE", "SR", "PR", "KO", "REG"})
# Path tokens -> modality, for files that carry no modality of their own.
_PATH_TOKENS = {
    "ct": "CT",
    "cta": "CT",
    "mr": "MR",
    "mri": "MR",
    "t1": "MR",
    "t1w": "MR",
    "t1ce": "MR",
    "t2": "MR",
    "t2w": "MR",
    "flair": "MR",
    "xray": "XR",
    "xr": "XR",
    "cxr": "XR",
    "cr": "XR",
    "dx": "XR",
    "radiograph": "XR",
    "mammo": "MG",
    "mammography": "MG",
    "ultrasound": "US",
}
# The only DICOM elements this module parses: Modality and what decoding and physical units need.
_DICOM_TAGS = [
    "Modality",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "PlanarConfiguration",
    "RescaleSlope",
    "RescaleIntercept",
    "ModalityLUTSequence",
    "PixelPresentation",
    *(f"{c}PaletteColorLookupTable{p}" for c in ("Red", "Green", "Blue", "Alpha") for p in ("Descriptor", "Data")),
    *(f"Segmented{c}PaletteColorLookupTableData" for c in ("Red", "Green", "Blue", "Alpha")),
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
]
_PIXEL_DATA_TAGS = frozenset({(0x7FE0, 0x0008), (0x7FE0, 0x0009), (0x7FE0, 0x0010)})
_PIXEL_DATA_KEYWORDS = ("FloatPixelData", "DoubleFloatPixelData", "PixelData")
_PIXEL_DATA_VRS = frozenset({b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN"})
_UNDEFINED_LENGTH = 0xFFFFFFFF
# Colour interpretations that pydicom (or the JPEG 2000 decoder) returns as RGB.
_RGB_INTERPRETATIONS = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"})


class UnreadableImage(Exception):
    """A file that cannot be decoded; str() is '<path>: <reason>', and the reason never holds a tag value."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True, eq=False)
class Frame:
    """One 2-D image of a file.

    pixels:        float32 (H, W) grey or (H, W, 3) RGB in physical units: CT in HU (rescale applied),
                   MONOCHROME1 already inverted; NaN/Inf are left for `intensity.normalize` to clean.
    modality:      one of MODALITIES.
    frame:         DICOM frame / TIFF page index; NIfTI slice index (4-D: volume * n_slices + slice); else 0.
    source_format: 'dicom' | 'nifti' | 'png' | 'jpeg' | 'tiff'.
    """

    pixels: np.ndarray
    modality: str
    frame: int
    source_format: str


def source_format(path: str | os.PathLike) -> str | None:
    """The format a file's suffix names ('dicom', 'nifti', 'png', 'jpeg', 'tiff'), or None."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return "nifti"
    return _FORMAT_BY_SUFFIX.get(Path(name).suffix)


def has_dicm_marker(path: str | os.PathLike) -> bool:
    """True for a file with the DICOM file-format marker ('DICM' after the 128-byte preamble)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def is_candidate(path: str | os.PathLike) -> bool:
    """True for a file that may hold an image: a supported suffix, or a DICOM marker (DICOMs named by UID)."""
    return source_format(path) is not None or (Path(path).is_file() and has_dicm_marker(path))


def infer_modality(relpath: str) -> str:
    """The modality a non-DICOM file's path names, by tokens split on / _ - . (file name first); else 'OT'.

    'ct' -> CT; 'mr', 'mri', 't1', 't2', 'flair' (and 't1w', 't1ce', 't2w') -> MR; 'xray', 'xr', 'cxr', 'cr',
    'dx', 'radiograph' (and 'x-ray') -> XR; 'mammo', 'mammography' -> MG; 'ultrasound' -> US.
    """
    text = str(relpath).lower().replace("\\", "/").replace("x-ray", "xray")
    for token in reversed(re.split(r"[/_\-.]+", text)):
        if token in _PATH_TOKENS:
            return _PATH_TOKENS[token]
    return "OT"


def normalize_modality(code: str | None) -> str:
    """A DICOM Modality code (or one of MODALITIES) -> one of MODALITIES."""
    return _DICOM_MODALITY.get(str(code or "").strip().upper(), "OT")


def iter_frames(
    path: str | os.PathLike, *, nifti_volumes: NiftiVolumes = "all", modality: str | None = None
) -> Iterator[Frame]:
    """Yield every 2-D frame of the file at `path`, in frame order.

    nifti_volumes: 'all' slices every volume of a 4-D NIfTI, 'first' only the first volume's.
    modality:      overrides the modality (else the DICOM Modality tag, else `infer_modality(path)`).
    Raises UnreadableImage (possibly after some frames were yielded) for a file that cannot be decoded.
    """
    _check_volumes(nifti_volumes)
    fmt = _format_or_raise(path)
    if fmt == "dicom":
        yield from _dicom_frames(path, None, modality)
    elif fmt == "nifti":
        yield from _nifti_frames(path, nifti_volumes, _modality_for(path, modality))
    else:
        yield from _raster_frames(path, fmt, None, _modality_for(path, modality))


def read_frame(
    path: str | os.PathLike, frame: int, *, nifti_volumes: NiftiVolumes = "all", modality: str | None = None
) -> Frame:
    """Read frame `frame` of the file at `path`, decoding no more of the file than the format requires.

    Raises IndexError for a frame the file does not have, UnreadableImage for a file that cannot be decoded.
    """
    _check_volumes(nifti_volumes)
    fmt = _format_or_raise(path)
    frame = int(frame)
    if frame < 0:
        raise IndexError(f"{path}: frame {frame} is negative")
    if fmt == "dicom":
        return _only(_dicom_frames(path, [frame], modality))
    if fmt == "nifti":
        return _nifti_frame(path, frame, nifti_volumes, _modality_for(path, modality))
    return _only(_raster_frames(path, fmt, frame, _modality_for(path, modality)))


def load_image(
    root: str | os.PathLike,
    relpath: str,
    frame: int,
    modality: str | None,
    intensity: IntensityConfig | None = None,
) -> np.ndarray:
    """The model-ready image of a manifest row: float32 in [0, 1], (H, W) or (H, W, 3).

    `modality` is the manifest's (None: the file's own, as in `iter_frames`); it picks the intensity rule.
    """
    image = read_frame(Path(root) / relpath, frame, modality=modality)
    return normalize(image.pixels, image.modality, intensity or IntensityConfig())


# --- shared helpers ------------------------------------------------------------------------------------------


def _check_volumes(nifti_volumes: str) -> None:
    if nifti_volumes not in ("all", "first"):
        raise ValueError(f"nifti_volumes must be 'all' or 'first', got {nifti_volumes!r}")


def _format_or_raise(path: str | os.PathLike) -> str:
    fmt = source_format(path)
    if fmt is None and has_dicm_marker(path):
        fmt = "dicom"
    if fmt is None:
        suffix = Path(path).suffix.lower() or "no suffix"
        raise UnreadableImage(path, f"unsupported file type ({suffix})")
    if not Path(path).is_file():
        raise UnreadableImage(path, "no such file")
    if os.path.getsize(path) == 0:
        raise UnreadableImage(path, "empty file (0 bytes)")
    return fmt


def _only(frames: Generator[Frame, None, None]) -> Frame:
    """The one frame of a generator asked for one frame; closes it (and the file it holds) at once."""
    try:
        return next(frames)
    finally:
        frames.close()


def _modality_for(path: str | os.PathLike, modality: str | None) -> str:
    return normalize_modality(modality) if modality else infer_modality(str(path))


def _describe(exc: BaseException) -> str:
    """A one-line, bounded description of a decoder's exception (decoders only see pixel data)."""
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextmanager
def _decoding(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Turn a library's decoding error into UnreadableImage('<what>: <error>')."""
    try:
        yield
    except (UnreadableImage, IndexError):
        raise
    except Exception as exc:  # noqa: BLE001 - every decoder failure is a reason, not a crash
        raise UnreadableImage(path, f"{what}: {_describe(exc)}") from exc


def _as_float32(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


# --- DICOM ---------------------------------------------------------------------------------------------------


def _dicom_frames(path: str | os.PathLike, indices: Sequence[int] | None, modality: str | None) -> Iterator[Frame]:
    from pydicom.pixels import iter_pixels

    header, transfer_syntax, source = _read_dicom_header(path)
    code = str(header.get("Modality") or "").strip().upper()
    if code in _NON_IMAGE_MODALITIES:
        raise UnreadableImage(path, f"not an image to pretrain on (Modality {code})")
    if modality:
        frame_modality = normalize_modality(modality)
    else:  # a DICOM without a Modality tag falls back to its path, like other formats
        frame_modality = normalize_modality(code) if code else infer_modality(str(path))
    n_frames = _dicom_frame_count(header)
    if indices is not None:
        for index in indices:
            if not 0 <= index < n_frames:
                raise IndexError(f"{path}: frame {index} out of range (the file has {n_frames} frames)")
    options = {} if _has_file_meta_syntax(header) else {"transfer_syntax_uid": transfer_syntax}

    frames = iter_pixels(source, indices=indices, **options)  # lazy: decodes one frame per next()
    for index in indices if indices is not None else range(n_frames):
        # Warnings are muted around the decoding only, never while the caller holds a yielded frame.
        with warnings.catch_warnings(), _decoding(path, f"cannot decode pixel data ({transfer_syntax.name})"):
            warnings.simplefilter("ignore")  # pydicom warns about odd but decodable files
            pixels = next(frames, None)
            if pixels is None:
                raise UnreadableImage(path, f"pixel data holds fewer frames than the {n_frames} declared")
            pixels = _dicom_physical(pixels, header, index, path)
        yield Frame(pixels, frame_modality, int(index), "dicom")


def _read_dicom_header(path: str | os.PathLike):
    """(header, transfer syntax, decoding source) of a DICOM file, parsing only _DICOM_TAGS.

    Checks that a pixel data element follows and, when uncompressed, that it is complete and fits the geometry.
    The decoding source is the path (pydicom then reads only the frames it needs), or for a deflated file,
    whose stream must be inflated as a whole, a dataset of the whitelisted tags and the pixel data.
    """
    import pydicom

    marker = has_dicm_marker(path)
    with open(path, "rb") as f, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            header = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=_DICOM_TAGS, force=not marker)
        except Exception as exc:  # noqa: BLE001
            # No message: a parse error on a malformed file may quote bytes of any element.
            raise UnreadableImage(path, f"not a readable DICOM file ({type(exc).__name__})") from None
        for _ in header.iterall():  # convert the values now, while pydicom's warnings about them are muted
            pass
        pixel_offset = f.tell()
        element = f.read(12)
    if not marker and not ("Rows" in header and "Columns" in header):
        raise UnreadableImage(path, "not a DICOM file (no 'DICM' marker and no image pixel elements)")
    transfer_syntax = _transfer_syntax(header)

    if transfer_syntax.is_deflated:  # the stream on disk is compressed: inflate and read it whole
        source = _whitelisted_dataset(path)
        _check_geometry(path, header, None)
        return source, transfer_syntax, source

    remaining = os.path.getsize(path) - pixel_offset
    declared, explicit_vr = _pixel_element(path, element, transfer_syntax.is_little_endian, remaining)
    _check_geometry(path, header, declared)
    if explicit_vr == transfer_syntax.is_implicit_VR:
        # The file contradicts its transfer syntax; pydicom copes only when reading the dataset whole.
        return header, transfer_syntax, _whitelisted_dataset(path)
    return header, transfer_syntax, Path(path)


def _whitelisted_dataset(path: str | os.PathLike):
    """The file's _DICOM_TAGS and pixel data as a dataset (for files pydicom cannot decode frame by frame)."""
    import pydicom

    with warnings.catch_warnings(), _decoding(path, "cannot read DICOM dataset"):
        warnings.simplefilter("ignore")
        dataset = pydicom.dcmread(path, specific_tags=_DICOM_TAGS + list(_PIXEL_DATA_KEYWORDS), force=True)
        for _ in dataset.iterall():
            pass
    if not any(keyword in dataset for keyword in _PIXEL_DATA_KEYWORDS):
        raise UnreadableImage(path, "no pixel data")
    return dataset


def _transfer_syntax(header):
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if _has_file_meta_syntax(header):
        return header.file_meta.TransferSyntaxUID
    implicit, little = header.original_encoding  # a bare dataset: the encoding pydicom detected
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _pixel_element(
    path: str | os.PathLike, element: bytes, little_endian: bool, remaining: int
) -> tuple[int | None, bool]:
    """(declared byte length or None when encapsulated, explicit VR?) of the pixel data element at `element`."""
    if len(element) < 8:
        raise UnreadableImage(path, "no pixel data")
    endian = "<" if little_endian else ">"
    group, elem = np.frombuffer(element[:4], dtype=f"{endian}u2").tolist()
    if (group, elem) not in _PIXEL_DATA_TAGS:
        raise UnreadableImage(path, "no pixel data")
    # Explicit or implicit VR, by the bytes (as pydicom does): some files contradict their transfer syntax.
    explicit = element[4:6] in _PIXEL_DATA_VRS
    header_length, length_bytes = (12, element[8:12]) if explicit else (8, element[4:8])
    if len(length_bytes) < 4:
        raise UnreadableImage(path, "pixel data truncated (element header cut)")
    declared = int(np.frombuffer(length_bytes, dtype=f"{endian}u4")[0])
    if declared == _UNDEFINED_LENGTH:
        return None, explicit
    present = remaining - header_length
    if present < declared:
        raise UnreadableImage(path, f"pixel data truncated ({present} of {declared} bytes present)")
    return declared, explicit


def _check_geometry(path: str | os.PathLike, header, declared: int | None) -> None:
    """Rows/Columns present; an uncompressed payload of `declared` bytes holds every frame."""
    from pydicom.pixels.utils import get_expected_length

    if not ("Rows" in header and "Columns" in header) or not (header.Rows and header.Columns):
        raise UnreadableImage(path, "no image geometry (Rows/Columns missing or zero)")
    if declared is None:
        return
    try:
        expected = int(get_expected_length(header))
    except (AttributeError, KeyError, TypeError, ValueError):  # incomplete geometry: the decoder will say more
        return
    if declared < expected:
        raise UnreadableImage(path, f"pixel data shorter than its geometry needs ({declared} of {expected} bytes)")


def _has_file_meta_syntax(header) -> bool:
    return bool(getattr(header, "file_meta", None) and header.file_meta.get("TransferSyntaxUID"))


def _dicom_frame_count(header) -> int:
    try:
        return max(1, int(header.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def _dicom_physical(pixels: np.ndarray, header, index: int, path: str | os.PathLike) -> np.ndarray:
    """Decoded stored values of one frame -> float32 physical values (modality LUT/rescale, MONOCHROME1, RGB)."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    interpretation = str(header.get("PhotometricInterpretation") or "").strip().upper()
    if interpretation == "PALETTE COLOR":
        return _as_float32(apply_color_lut(pixels, header)[..., :3])
    if pixels.ndim == 3:
        if interpretation not in _RGB_INTERPRETATIONS:
            raise UnreadableImage(path, f"unsupported colour interpretation ({interpretation or 'missing'})")
        return _as_float32(pixels)

    if header.get("ModalityLUTSequence"):
        values = _as_float32(apply_modality_lut(pixels, header))
        low, high = float(values.min()), float(values.max())  # a LUT's output range has no closed form
    else:
        slope, intercept = _rescale(header, index)
        values = _as_float32(pixels.astype(np.float64) * slope + intercept)
        stored_low, stored_high = _stored_range(header, pixels)
        low, high = sorted((stored_low * slope + intercept, stored_high * slope + intercept))
    if interpretation == "MONOCHROME1":  # low values are bright: flip within the representable range
        values = np.float32(low + high) - values
    return values


def _rescale(header, index: int) -> tuple[float, float]:
    """(slope, intercept) of frame `index`: per-frame, then shared functional groups, then the top level."""
    groups = []
    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and index < len(per_frame):
        groups.append(per_frame[index])
    shared = header.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    groups.append(header)
    for group in groups:
        transform = group.get("PixelValueTransformationSequence")
        source = transform[0] if transform else group
        if "RescaleSlope" in source and "RescaleIntercept" in source:
            return float(source.RescaleSlope), float(source.RescaleIntercept)
    return 1.0, 0.0


def _stored_range(header, pixels: np.ndarray) -> tuple[float, float]:
    bits = header.get("BitsStored")
    if not bits or pixels.dtype.kind == "f":
        return float(pixels.min()), float(pixels.max())
    if header.get("PixelRepresentation", 0) == 1:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0**bits - 1


# --- NIfTI ---------------------------------------------------------------------------------------------------
# Frames are axial slices img[:, :, z] of the canonical (RAS+, nib.as_closest_canonical) orientation. The
# reorientation is applied to the slab read through `dataobj`, so one slice never decodes the whole volume.


def _open_nifti(path: str | os.PathLike, keep_file_open: bool = False):
    import nibabel as nib

    with _decoding(path, "cannot read NIfTI header"):
        image = nib.load(str(path), keep_file_open=keep_file_open)
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise UnreadableImage(path, f"not a NIfTI image ({type(image).__name__})")
    shape = image.shape
    if len(shape) > 4 and any(n != 1 for n in shape[4:]):
        raise UnreadableImage(path, f"unsupported NIfTI dimensionality ({len(shape)}-D)")
    dtype = image.get_data_dtype()
    if dtype.fields is not None or dtype.kind == "c":
        raise UnreadableImage(path, f"unsupported NIfTI data type ({dtype})")
    return image


def _nifti_geometry(image) -> tuple[tuple[int, int, int], int]:
    """((nx, ny, nz) on disk, number of volumes) with missing axes counted as 1."""
    shape = tuple(image.shape) + (1,) * max(0, 4 - len(image.shape))
    return (int(shape[0]), int(shape[1]), int(shape[2])), int(shape[3])


def _canonical_orientation(image) -> np.ndarray:
    import nibabel as nib

    ornt = nib.orientations.io_orientation(image.affine)
    if np.isnan(ornt).any():  # a degenerate affine: keep the array as stored, as nibabel cannot reorient it
        ornt = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    return ornt


def _read_nifti_block(image, volume: int, disk_slices: tuple[slice, slice, slice]) -> np.ndarray:
    """A 3-D block of volume `volume` on disk, scaled by nibabel, as float32."""
    ndim = len(image.shape)
    selection = disk_slices[:ndim] + ((volume,) if ndim >= 4 else ()) + (0,) * max(0, ndim - 4)
    block = np.asarray(image.dataobj[selection])
    return _as_float32(block.reshape(block.shape + (1,) * (3 - block.ndim)))


def _nifti_frames(path: str | os.PathLike, nifti_volumes: NiftiVolumes, modality: str) -> Iterator[Frame]:
    import nibabel as nib

    # keep_file_open: volumes are read in file order, so a .nii.gz is decompressed once, not once per volume.
    image = _open_nifti(path, keep_file_open=True)
    _, n_volumes = _nifti_geometry(image)
    ornt = _canonical_orientation(image)
    everything = (slice(None),) * 3
    for volume in range(n_volumes if nifti_volumes == "all" else 1):
        with _decoding(path, "cannot read NIfTI voxels"):
            volume_xyz = nib.orientations.apply_orientation(_read_nifti_block(image, volume, everything), ornt)
        nz = volume_xyz.shape[2]
        for z in range(nz):
            yield Frame(_as_float32(volume_xyz[:, :, z]), modality, volume * nz + z, "nifti")


def _nifti_frame(path: str | os.PathLike, frame: int, nifti_volumes: NiftiVolumes, modality: str) -> Frame:
    import nibabel as nib

    image = _open_nifti(path)
    shape_xyz, n_volumes = _nifti_geometry(image)
    ornt = _canonical_orientation(image)
    axis = int(np.flatnonzero(ornt[:, 0] == 2)[0])  # the disk axis that becomes canonical S (slices)
    nz = shape_xyz[axis]
    n_frames = nz * (n_volumes if nifti_volumes == "all" else 1)
    if frame >= n_frames:
        raise IndexError(f"{path}: frame {frame} out of range (the file has {n_frames} frames)")
    volume, z = divmod(frame, nz)
    index = z if ornt[axis, 1] > 0 else shape_xyz[axis] - 1 - z
    disk_slices = tuple(slice(index, index + 1) if a == axis else slice(None) for a in range(3))
    with _decoding(path, "cannot read NIfTI voxels"):
        slab_xyz = nib.orientations.apply_orientation(_read_nifti_block(image, volume, disk_slices), ornt)
    return Frame(_as_float32(slab_xyz[:, :, 0]), modality, frame, "nifti")


# --- PNG / JPEG / TIFF -----------------------------------------------------------------------------------------


def _raster_frames(path: str | os.PathLike, fmt: str, frame: int | None, modality: str) -> Iterator[Frame]:
    if fmt != "tiff" and frame is not None and frame != 0:
        raise IndexError(f"{path}: frame {frame} out of range (the file has 1 frame)")
    if fmt == "jpeg":
        pages = [_read_jpeg(path)]
    elif fmt == "png":
        pages = [_read_png(path)]
    else:
        pages = _read_tiff(path, frame)
    first = 0 if frame is None else frame
    for offset, pixels in enumerate(pages):
        yield Frame(_as_float32(pixels), modality, first + offset, fmt)


def _read_jpeg(path: str | os.PathLike) -> np.ndarray:
    # PIL, not OpenCV: OpenCV returns a grey-padded image for a truncated JPEG, PIL raises.
    from PIL import Image

    with _decoding(path, "cannot decode JPEG"), Image.open(path) as image:
        image.load()
        if image.mode not in ("L", "RGB", "I;16", "I", "F"):
            image = image.convert("RGB")  # CMYK, YCbCr, palette, ... -> RGB
        return np.asarray(image)


def _read_png(path: str | os.PathLike) -> np.ndarray:
    import cv2

    with _decoding(path, "cannot decode PNG"):
        pixels = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)  # keeps 16 bit
    if pixels is None:
        raise UnreadableImage(path, "cannot decode PNG (corrupt or truncated)")
    return _opencv_to_rgb(pixels, path)


def _read_tiff(path: str | os.PathLike, frame: int | None) -> list[np.ndarray]:
    import cv2

    with _decoding(path, "cannot decode TIFF"):
        n_pages = _tiff_page_count(path)
        # OpenCV counts the pages it can reach and stops quietly at a broken link; the chain walk above does not.
        if cv2.imcount(str(path), cv2.IMREAD_UNCHANGED) != n_pages:
            raise UnreadableImage(path, "cannot decode TIFF (corrupt or truncated)")
        if frame is not None and frame >= n_pages:
            raise IndexError(f"{path}: frame {frame} out of range (the file has {n_pages} frames)")
        start, count = (0, n_pages) if frame is None else (frame, 1)
        ok, pages = cv2.imreadmulti(str(path), start=start, count=count, flags=cv2.IMREAD_UNCHANGED)
    if not ok or len(pages) != count:
        raise UnreadableImage(path, "cannot decode TIFF (corrupt or truncated)")
    return [_opencv_to_rgb(page, path) for page in pages]


def _tiff_page_count(path: str | os.PathLike) -> int:
    """Pages (image file directories) in a TIFF or BigTIFF, by walking the directory chain from the header.

    Raises UnreadableImage when a directory lies past the end of the file (a truncated file), or the chain loops.
    """
    with open(path, "rb") as fh:
        head = fh.read(16)
        order = {b"II": "<", b"MM": ">"}.get(head[:2])
        magic = struct.unpack(order + "H", head[2:4])[0] if order and len(head) >= 8 else None
        if magic == 42:  # classic TIFF: 2-byte entry count, 12-byte entries, 4-byte offsets
            count_fmt, entry_size, offset_fmt = order + "H", 12, order + "I"
            offset = struct.unpack(offset_fmt, head[4:8])[0]
        elif magic == 43 and len(head) == 16:  # BigTIFF: 8-byte count, 20-byte entries, 8-byte offsets
            count_fmt, entry_size, offset_fmt = order + "Q", 20, order + "Q"
            offset = struct.unpack(offset_fmt, head[8:16])[0]
        else:
            raise UnreadableImage(path, "cannot decode TIFF (no TIFF header)")

        def read(at: int, fmt: str) -> int:
            fh.seek(at)
            raw = fh.read(struct.calcsize(fmt))
            if len(raw) != struct.calcsize(fmt):
                raise UnreadableImage(path, f"truncated TIFF (page {len(seen)}'s directory lies past the end)")
            return struct.unpack(fmt, raw)[0]

        seen: set[int] = set()
        while offset:
            if offset in seen:
                raise UnreadableImage(path, "cannot decode TIFF (its page directories form a loop)")
            seen.add(offset)
            entries_at = offset + struct.calcsize(count_fmt)
            offset = read(entries_at + read(offset, count_fmt) * entry_size, offset_fmt)  # the next directory
    if not seen:
        raise UnreadableImage(path, "cannot decode TIFF (no pages)")
    return len(seen)


def _opencv_to_rgb(pixels: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """OpenCV's grey / grey+alpha / BGR / BGRA -> grey (H, W) or RGB (H, W, 3); alpha is dropped."""
    if pixels.ndim == 2:
        return pixels
    channels = pixels.shape[2]
    if channels in (1, 2):
        return pixels[..., 0]
    if channels in (3, 4):
        return pixels[..., 2::-1]
    raise UnreadableImage(path, f"unsupported channel count ({channels})")
