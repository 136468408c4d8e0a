"""NIfTI reader cases that `make mutate MODULE=data/readers/nifti.py` found untested: a degenerate affine, the slice
axis on disk axis 1, 2-D and 5-D files, complex voxels, a non-NIfTI image, and the exact error messages.

Voxel values encode their disk index (100 i + 10 j + k), so the expected slices are written out by hand.
"""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest

from data.readers import UnreadableImage, iter_frames, read_frame
from data.readers.nifti import _open_nifti
from tests._readers_files import write_nifti


def coded(shape: tuple[int, ...]) -> np.ndarray:
    grids = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return sum(w * g for w, g in zip((100, 10, 1, 1000, 10000), grids, strict=False)).astype(np.float32)


def test_a_degenerate_affine_keeps_the_array_as_stored(tmp_path):
    volume = coded((3, 4, 5))
    image = nib.Nifti1Image(volume, np.eye(4))
    image.set_sform(np.diag([-1.0, 0.0, -2.0, 1.0]), code=1)  # the y axis has no direction: no orientation
    image.set_qform(None, code=0)
    path = tmp_path / "degenerate.nii"
    nib.save(image, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        frames = list(iter_frames(path))
        one = read_frame(path, 3)
    assert len(frames) == 5  # slices along disk axis 2, neither flipped nor permuted
    for z in (0, 3, 4):
        np.testing.assert_array_equal(frames[z].pixels, volume[:, :, z])
    np.testing.assert_array_equal(one.pixels, volume[:, :, 3])


def test_a_flipped_slice_axis_on_disk_axis_1(tmp_path):
    ni, nj, nk = 3, 7, 4
    # disk i -> world +x, disk j -> world -z (the slices, flipped), disk k -> world +y
    affine = np.array([[1.0, 0, 0, 0], [0, 0, 2.0, 0], [0, -3.0, 0, 0], [0, 0, 0, 1]])
    path = write_nifti(tmp_path / "slices_on_j.nii.gz", coded((ni, nj, nk)), affine)
    frames = list(iter_frames(path))
    assert len(frames) == nj
    for z in (0, 2, nj - 1):
        expected = np.array([[100 * x + 10 * (nj - 1 - z) + y for y in range(nk)] for x in range(ni)], np.float32)
        np.testing.assert_array_equal(frames[z].pixels, expected)
        frame = read_frame(path, z)
        np.testing.assert_array_equal(frame.pixels, expected)
        assert (frame.frame, frame.source_format) == (z, "nifti")
    with pytest.raises(IndexError, match=f"frame {nj} out of range \\(the file has {nj} frames\\)"):
        read_frame(path, nj)


def test_a_2d_file_is_one_slice(tmp_path):
    path = write_nifti(tmp_path / "plane.nii", coded((5, 3)))
    (frame,) = list(iter_frames(path))
    expected = np.array([[100 * i + 10 * j for j in range(3)] for i in range(5)], np.float32)
    np.testing.assert_array_equal(frame.pixels, expected)
    np.testing.assert_array_equal(read_frame(path, 0).pixels, expected)
    assert read_frame(path, 0).pixels.shape == (5, 3)


def test_a_5d_file_with_a_unit_fifth_axis_reads_and_another_is_refused(tmp_path):
    volume = coded((3, 4, 2, 2))
    path = write_nifti(tmp_path / "five.nii", volume[..., None])
    every = list(iter_frames(path, nifti_volumes="all"))
    assert len(every) == 4 and every[3].pixels.shape == (3, 4)
    np.testing.assert_array_equal(every[3].pixels, volume[:, :, 1, 1])
    np.testing.assert_array_equal(read_frame(path, 3, nifti_volumes="all").pixels, volume[:, :, 1, 1])
    np.testing.assert_array_equal(read_frame(path, 1, nifti_volumes="all").pixels, volume[:, :, 1, 0])

    bad = write_nifti(tmp_path / "five_bad.nii", np.zeros((3, 4, 2, 1, 2), np.float32))
    with pytest.raises(UnreadableImage) as error:
        read_frame(bad, 0)
    assert str(error.value) == f"{bad}: unsupported NIfTI dimensionality (5-D)"


def test_complex_voxels_are_refused_with_the_path(tmp_path):
    path = write_nifti(tmp_path / "complex.nii", np.zeros((3, 4, 2), np.complex64))
    with pytest.raises(UnreadableImage) as error:
        list(iter_frames(path))
    assert str(error.value) == f"{path}: unsupported NIfTI data type (complex64)"


def test_an_image_that_is_not_nifti_is_refused_with_the_path(tmp_path):
    path = tmp_path / "scan.mgz"
    nib.save(nib.MGHImage(np.zeros((2, 3, 4), np.float32), np.eye(4)), path)
    with pytest.raises(UnreadableImage) as error:
        _open_nifti(path)
    assert str(error.value) == f"{path}: not a NIfTI image (MGHImage)"


def test_header_and_voxel_errors_name_the_path_and_the_stage(tmp_path):
    broken = tmp_path / "broken.nii"
    broken.write_bytes(b"not a nifti header at all" * 20)
    with pytest.raises(UnreadableImage) as error:
        read_frame(broken, 0)
    assert str(error.value).startswith(f"{broken}: cannot read NIfTI header: ")
    assert error.value.path == str(broken)

    whole = write_nifti(tmp_path / "whole.nii", coded((8, 8, 6)))
    cut = tmp_path / "cut.nii"
    cut.write_bytes(whole.read_bytes()[: 352 + 8 * 8 * 4 * 2])  # the header and two of six slices
    for read in (lambda: list(iter_frames(cut)), lambda: read_frame(cut, 5)):
        with pytest.raises(UnreadableImage) as error:
            read()
        assert str(error.value).startswith(f"{cut}: cannot read NIfTI voxels: ")
