"""NIfTI files -> axial slices of the canonical (RAS+) orientation, each volume of a 4-D image in turn.

Frames are axial slices img[:, :, z] of the canonical (RAS+, nib.as_closest_canonical) orientation. The
reorientation is applied to the slab read through `dataobj`, so one slice never decodes the whole volume.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from data.readers.common import Frame, NiftiVolumes, UnreadableImage, as_float32, decoding


def _open_nifti(path: str | os.PathLike, keep_file_open: bool = False):
    import nibabel as nib

    with decoding(path, "cannot read NIfTI header"):
        image = nib.load(str(path), keep_file_open=keep_file_open)
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise UnreadableImage(path, f"not a NIfTI image ({type(image).__name__})")
    shape = image.shape
    if any(int(n) == 0 for n in shape):  # e.g. (64, 64, 0): no slice to read, refused here rather than at localize
        raise UnreadableImage(path, f"zero-length NIfTI volume (shape {'x'.join(str(int(n)) for n in shape)})")
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
    return as_float32(block.reshape(block.shape + (1,) * (3 - block.ndim)))


def nifti_frames(path: str | os.PathLike, nifti_volumes: NiftiVolumes, modality: str) -> Iterator[Frame]:
    """Every axial slice of every volume ('all') or of the first, in frame order."""
    import nibabel as nib

    # keep_file_open: volumes are read in file order, so a .nii.gz is decompressed once, not once per volume.
    image = _open_nifti(path, keep_file_open=True)
    _, n_volumes = _nifti_geometry(image)
    ornt = _canonical_orientation(image)
    everything = (slice(None),) * 3
    for volume in range(n_volumes if nifti_volumes == "all" else 1):
        with decoding(path, "cannot read NIfTI voxels"):
            volume_xyz = nib.orientations.apply_orientation(_read_nifti_block(image, volume, everything), ornt)
        nz = volume_xyz.shape[2]
        for z in range(nz):
            yield Frame(as_float32(volume_xyz[:, :, z]), modality, volume * nz + z, "nifti")


def nifti_frame(path: str | os.PathLike, frame: int, nifti_volumes: NiftiVolumes, modality: str) -> Frame:
    """Frame `frame` alone: only its slab is read and reoriented."""
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
    with decoding(path, "cannot read NIfTI voxels"):
        slab_xyz = nib.orientations.apply_orientation(_read_nifti_block(image, volume, disk_slices), ornt)
    return Frame(as_float32(slab_xyz[:, :, 0]), modality, frame, "nifti")
