"""DICOM files -> frames in physical units (modality LUT / rescale applied, MONOCHROME1 inverted, colour as RGB).

Privacy: files are read with pydicom's `specific_tags`, so only the Modality tag and the pixel-module tags are
ever parsed; no patient or study value reaches a Frame, a log or an error message.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from data.readers.common import Frame, UnreadableImage, as_float32, decoding
from data.readers.modality import infer_modality, normalize_modality

# Objects that carry pixel data but are not images to pretrain on (label maps, dose grids).
_NON_IMAGE_MODALITIES = frozenset({"SEG", "RTDOSE", "RTSTRUCT", "RTPLAN", "RTIMAGE", "SR", "PR", "KO", "REG"})
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
_SNIFF_BYTES = 1 << 20  # how far into a failed file to look for its pixel data element (headers are far shorter)
# Colour interpretations that pydicom (or the JPEG 2000 decoder) returns as RGB.
_RGB_INTERPRETATIONS = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"})


def has_dicm_marker(path: str | os.PathLike) -> bool:
    """True for a file with the DICOM file-format marker ('DICM' after the 128-byte preamble)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def dicom_frames(path: str | os.PathLike, indices: Sequence[int] | None, modality: str | None) -> Iterator[Frame]:
    """Frames `indices` (None: all) of a DICOM file, decoded one at a time; `modality` overrides the tag's."""
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
        with warnings.catch_warnings(), decoding(path, f"cannot decode pixel data ({transfer_syntax.name})"):
            warnings.simplefilter("ignore")  # pydicom warns about odd but decodable files
            pixels = next(frames, None)
            if pixels is None:
                raise UnreadableImage(path, f"pixel data holds fewer frames than the {n_frames} declared")
            pixels = _dicom_physical(pixels, header, index, path)
        yield Frame(pixels, frame_modality, int(index), "dicom")


def dicom_decodes_whole(path: str | os.PathLike) -> bool:
    """True when the file's pixel data is compressed (encapsulated) or deflated: frames are then best decoded in
    one pass over the file. Native pixel data is read frame by frame at its offset."""
    _, transfer_syntax, source = _read_dicom_header(path)
    return bool(transfer_syntax.is_encapsulated or transfer_syntax.is_deflated or not isinstance(source, Path))


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
        return header, transfer_syntax, _whitelisted_dataset(path, transfer_syntax)
    return header, transfer_syntax, Path(path)


def _whitelisted_dataset(path: str | os.PathLike, transfer_syntax=None):
    """The file's _DICOM_TAGS and pixel data as a dataset (for files pydicom cannot decode frame by frame).

    A bare data set (no file meta) gets `transfer_syntax` as its file meta's: pydicom decodes a dataset by that
    element alone (an explicit `transfer_syntax_uid` is only for a path)."""
    import pydicom

    with warnings.catch_warnings(), decoding(path, "cannot read DICOM dataset"):
        warnings.simplefilter("ignore")
        dataset = pydicom.dcmread(path, specific_tags=_DICOM_TAGS + list(_PIXEL_DATA_KEYWORDS), force=True)
        for _ in dataset.iterall():
            pass
    if not any(keyword in dataset for keyword in _PIXEL_DATA_KEYWORDS):
        raise UnreadableImage(path, "no pixel data")
    if transfer_syntax is not None and not _has_file_meta_syntax(dataset):
        from pydicom.dataset import FileMetaDataset

        dataset.file_meta = FileMetaDataset()
        dataset.file_meta.TransferSyntaxUID = transfer_syntax
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
    endian = "<" if little_endian else ">"
    if len(element) < 8 or tuple(np.frombuffer(element[:4], dtype=f"{endian}u2").tolist()) not in _PIXEL_DATA_TAGS:
        raise UnreadableImage(path, _no_pixel_data_reason(path, little_endian))
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


def _no_pixel_data_reason(path: str | os.PathLike, little_endian: bool) -> str:
    """'no pixel data', or what was found instead: a pixel data element in the other byte order than the transfer
    syntax says (the header was then parsed as garbage, so the element was not where expected)."""
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    tag = bytes.fromhex("e07f1000") if little_endian else bytes.fromhex("7fe00010")  # (7FE0,0010), as declared
    other = tag[1::-1] + tag[3:1:-1]
    if not any(tag + vr in head for vr in _PIXEL_DATA_VRS) and any(other + vr in head for vr in _PIXEL_DATA_VRS):
        said, found = ("little", "big") if little_endian else ("big", "little")
        return f"transfer syntax says {said}-endian but the data set is {found}-endian"
    return "no pixel data"


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
        return as_float32(apply_color_lut(pixels, header)[..., :3])
    if pixels.ndim == 3:
        if interpretation not in _RGB_INTERPRETATIONS:
            raise UnreadableImage(path, f"unsupported colour interpretation ({interpretation or 'missing'})")
        return as_float32(pixels)

    if header.get("ModalityLUTSequence"):
        values = as_float32(apply_modality_lut(pixels, header))
        low, high = float(values.min()), float(values.max())  # a LUT's output range has no closed form
    else:
        slope, intercept = _rescale(header, index)
        values = as_float32(pixels.astype(np.float64) * slope + intercept)
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
