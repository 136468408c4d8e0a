"""Any supported file -> its 2-D frames: format by suffix (or DICOM marker), then the format's reader.

`iter_frames` yields every frame of a file (the scan uses it), `read_frame` reads one efficiently (the datasets
use it), `load_image` adds intensity normalisation and is the one entry point to a model-ready image.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from data.ids import decode_relpath
from data.intensity import IntensityConfig, normalize
from data.readers.common import Frame, NiftiVolumes, UnreadableImage
from data.readers.dicom import dicom_decodes_whole, dicom_frames, has_dicm_marker
from data.readers.modality import infer_modality, normalize_modality
from data.readers.nifti import nifti_frame, nifti_frames
from data.readers.raster import raster_frames

SUPPORTED_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom", ".nii", ".nii.gz", ".png", ".jpg", ".jpeg", ".tif", ".tiff")

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


def source_format(path: str | os.PathLike) -> str | None:
    """The format a file's suffix names ('dicom', 'nifti', 'png', 'jpeg', 'tiff'), or None."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return "nifti"
    return _FORMAT_BY_SUFFIX.get(Path(name).suffix)


def is_candidate(path: str | os.PathLike) -> bool:
    """True for a file that may hold an image: a supported suffix, or a DICOM marker (DICOMs named by UID)."""
    return source_format(path) is not None or (Path(path).is_file() and has_dicm_marker(path))


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
        yield from dicom_frames(path, None, modality)
        return
    with _named_by_content(path, fmt):
        if fmt == "nifti":
            yield from nifti_frames(path, nifti_volumes, _modality_for(path, modality))
        else:
            yield from raster_frames(path, fmt, None, _modality_for(path, modality))


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
        return _only(dicom_frames(path, [frame], modality))
    with _named_by_content(path, fmt):
        if fmt == "nifti":
            return nifti_frame(path, frame, nifti_volumes, _modality_for(path, modality))
        return _only(raster_frames(path, fmt, frame, _modality_for(path, modality)))


def decodes_whole(path: str | os.PathLike) -> bool:
    """True when reading one frame of the file costs about as much as decoding all of them, so that several frames
    are best decoded in one pass: a gzipped NIfTI (one gzip stream), a compressed or deflated DICOM. Uncompressed
    NIfTI is memory-mapped, native DICOM frames are read at their offsets, TIFF pages one by one."""
    fmt = _format_or_raise(path)
    if fmt == "nifti":
        return Path(path).name.lower().endswith(".gz")
    if fmt == "dicom":
        return dicom_decodes_whole(path)
    return False


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
    image = read_frame(Path(root) / decode_relpath(relpath), frame, modality=modality)
    return normalize(image.pixels, image.modality, intensity or IntensityConfig(), overwrite=True)


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
    try:
        status = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnreadableImage(path, "symlink loop (the link leads back to itself)") from None
        if os.path.islink(path):
            raise UnreadableImage(path, "broken symlink (its target does not exist)") from None
        raise UnreadableImage(path, "no such file") from None
    if not stat.S_ISREG(status.st_mode):
        raise UnreadableImage(path, "no such file")
    if status.st_size == 0:
        raise UnreadableImage(path, "empty file (0 bytes)")
    return fmt


# File signatures (offset, bytes, format): what a file whose suffix lies actually holds.
_SIGNATURES = (
    (128, b"DICM", "DICOM"),
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (0, b"\x1f\x8b", "gzip"),
)
_FORMAT_NAMES = {"nifti": "NIfTI", "png": "PNG", "jpeg": "JPEG", "tiff": "TIFF"}


@contextmanager
def _named_by_content(path: str | os.PathLike, fmt: str) -> Iterator[None]:
    """A file that fails to decode as its suffix says and starts like another format: the reason names what was
    found ('DICOM file with a .png suffix'), not the decoder's complaint. Checked on failure only, so reading
    well-named files costs nothing more."""
    try:
        yield
    except UnreadableImage as exc:
        found = _sniff(path)
        if found is None or found == _FORMAT_NAMES.get(fmt) or (fmt == "nifti" and found == "gzip"):
            raise
        suffix = ".nii.gz" if Path(path).name.lower().endswith(".nii.gz") else Path(path).suffix.lower()
        raise UnreadableImage(path, f"{found} file with a {suffix} suffix (rename it to match its content)") from exc


def _sniff(path: str | os.PathLike) -> str | None:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return None
    return next((name for at, magic, name in _SIGNATURES if head[at : at + len(magic)] == magic), None)


def _only(frames: Generator[Frame, None, None]) -> Frame:
    """The one frame of a generator asked for one frame; closes it (and the file it holds) at once."""
    try:
        return next(frames)
    finally:
        frames.close()


def _modality_for(path: str | os.PathLike, modality: str | None) -> str:
    return normalize_modality(modality) if modality else infer_modality(str(path))
