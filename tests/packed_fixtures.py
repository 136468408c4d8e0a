"""A small mixed corpus for the packed-store tests: gzipped CT volumes, an RLE multi-frame DICOM, PNGs (one larger
than the tests' max_side, one RGB, one 16-bit); every image distinct."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.uid import RLELossless

from tests._readers_files import write_dicom, write_nifti, write_opencv

MAX_SIDE = 64


def write_mixed_corpus(root: Path, volumes: int = 2, slices: int = 6) -> Path:
    rng = np.random.default_rng(1)
    for v in range(volumes):
        volume = rng.integers(-1000, 1500, (64, 48, slices), dtype=np.int16)
        write_nifti(root / "ct" / f"vol_{v}.nii.gz", volume + np.arange(slices, dtype=np.int16) * 11)
    frames = rng.integers(0, 4000, (4, 40, 48), dtype=np.uint16)
    write_dicom(root / "ct" / "multiframe.dcm", frames, slope=1.0, intercept=-1024.0, compress=RLELossless)
    yy, xx = np.mgrid[:100, :70]
    write_opencv(root / "xray" / "large.png", ((xx * 3 + yy) % 256).astype(np.uint8))  # 100 x 70 > MAX_SIDE
    write_opencv(root / "xray" / "colour.png", rng.integers(0, 256, (30, 20, 3), dtype=np.uint8))
    write_opencv(root / "xray" / "deep.png", rng.integers(0, 65536, (50, 50), dtype=np.uint16))
    return root
