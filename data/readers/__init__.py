"""Image readers: DICOM, NIfTI, PNG/JPEG/TIFF files -> 2-D frames in physical units.

One file holds one or more 2-D frames: a DICOM frame, a NIfTI axial slice (of each volume), a TIFF page.
`iter_frames` yields every frame of a file (the scan uses it), `read_frame` reads one efficiently (the
datasets use it), `decodes_whole` says when several frames are best decoded in one pass (`data.frame_source`),
`load_image` adds intensity normalisation and is the one entry point to a model-ready image.

    frames.py    format detection and the entry points above
    dicom.py     DICOM (privacy: only the Modality and pixel-module tags are ever parsed)
    nifti.py     NIfTI: axial slices of the canonical orientation
    raster.py    PNG / JPEG / TIFF
    modality.py  modality codes from DICOM tags or path tokens
    common.py    Frame, UnreadableImage and the decoding guard they share
"""

from data.readers.common import Frame, NiftiVolumes, UnreadableImage
from data.readers.dicom import has_dicm_marker
from data.readers.frames import (
    SUPPORTED_SUFFIXES,
    decodes_whole,
    is_candidate,
    iter_frames,
    load_image,
    read_frame,
    source_format,
)
from data.readers.modality import MODALITIES, infer_modality, normalize_modality

__all__ = [
    "MODALITIES",
    "SUPPORTED_SUFFIXES",
    "Frame",
    "NiftiVolumes",
    "UnreadableImage",
    "decodes_whole",
    "has_dicm_marker",
    "infer_modality",
    "is_candidate",
    "iter_frames",
    "load_image",
    "normalize_modality",
    "read_frame",
    "source_format",
]
