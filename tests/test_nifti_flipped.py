"""Slice selection of the NIfTI reader when an axis is flipped (issue 30, weak spot b).

Every voxel's value encodes its disk index (100 i + 10 j + k), every axis has its own length, and the expected
slice is written out by hand from the affine: canonical RAS+ axes, each pointing from low to high world
coordinate. A reader that takes slice z instead of n - 1 - z of a flipped slice axis, swaps two axes or skips the
flip of an in-plane axis returns other voxel values.
"""

from __future__ import annotations

import numpy as np
import pytest

from data.readers import iter_frames, read_frame
from tests._readers_files import write_nifti


def coded(shape: tuple[int, ...]) -> np.ndarray:
    """Voxel (i, j, k[, t]) holds 100 i + 10 j + k (+ 1000 t): its disk index, readable in any slice."""
    grids = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    value = 100 * grids[0] + 10 * grids[1] + grids[2]
    if len(shape) == 4:
        value = value + 1000 * grids[3]
    return value.astype(np.float32)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_flipped_slice_axis_reads_slices_from_the_far_end(tmp_path, suffix):
    nx, ny, nz = 5, 6, 7
    # world z = -4 k: disk slice k = nz - 1 is the lowest (most inferior), canonical slice 0
    path = write_nifti(tmp_path / f"flipped_z{suffix}", coded((nx, ny, nz)), np.diag([2.0, 3.0, -4.0, 1.0]))
    frames = list(iter_frames(path))
    assert len(frames) == nz and [f.frame for f in frames] == list(range(nz))
    for z in range(nz):
        expected = np.array([[100 * i + 10 * j + (nz - 1 - z) for j in range(ny)] for i in range(nx)], np.float32)
        assert frames[z].pixels.shape == (nx, ny)
        np.testing.assert_array_equal(frames[z].pixels, expected)
        np.testing.assert_array_equal(read_frame(path, z).pixels, expected)


def test_permuted_axes_with_flipped_slice_and_in_plane_axes(tmp_path):
    ni, nj, nk = 4, 5, 6
    # disk i -> world -z (flipped slice axis), disk j -> world +x, disk k -> world -y (flipped in-plane axis)
    affine = np.array([[0, 1.5, 0, 0], [0, 0, -2.0, 0], [-3.0, 0, 0, 0], [0, 0, 0, 1]])
    path = write_nifti(tmp_path / "permuted.nii.gz", coded((ni, nj, nk)), affine)
    frames = list(iter_frames(path))
    assert len(frames) == ni  # slices along disk i
    for z in range(ni):
        # canonical pixel (x, y) of slice z is disk voxel (ni - 1 - z, x, nk - 1 - y)
        expected = np.array(
            [[100 * (ni - 1 - z) + 10 * x + (nk - 1 - y) for y in range(nk)] for x in range(nj)], np.float32
        )
        assert frames[z].pixels.shape == (nj, nk)
        np.testing.assert_array_equal(frames[z].pixels, expected)
        np.testing.assert_array_equal(read_frame(path, z).pixels, expected)


def test_flipped_slice_axis_of_a_4d_image_reads_the_right_volume_and_slice(tmp_path):
    nx, ny, nz, nt = 3, 4, 5, 2
    path = write_nifti(tmp_path / "flipped_4d.nii.gz", coded((nx, ny, nz, nt)), np.diag([1.0, 1.0, -2.0, 1.0]))
    every = list(iter_frames(path, nifti_volumes="all"))
    assert len(every) == nz * nt
    for frame in (0, nz - 1, nz, nz + 1, 2 * nz - 1):
        t, z = divmod(frame, nz)
        expected = np.array([[1000 * t + 100 * i + 10 * j + (nz - 1 - z) for j in range(ny)] for i in range(nx)])
        np.testing.assert_array_equal(every[frame].pixels, expected.astype(np.float32))
        np.testing.assert_array_equal(read_frame(path, frame, nifti_volumes="all").pixels, expected)
    with pytest.raises(IndexError, match="frame 5 out of range"):
        read_frame(path, nz, nifti_volumes="first")
    np.testing.assert_array_equal(read_frame(path, nz - 1, nifti_volumes="first").pixels, every[nz - 1].pixels)
