"""CT window presets pinned to published level/width values (Hounsfield units).

Source: Radiopaedia, "Windowing (CT)" (radiopaedia.org/articles/windowing-ct), common presets as W:width L:level:
brain W:80 L:40; lungs W:1500 L:-600; bone W:1800 L:400; soft tissues W:350-400 L:20-60 (head and neck; abdomen
soft tissues W:400 L:50). Our "soft_tissue" preset is W:400 L:40, inside that published range.
"""

from __future__ import annotations

import numpy as np
import pytest

from data.intensity import CT_WINDOWS, IntensityConfig, normalize

PUBLISHED = {  # name -> (level, width)
    "brain": (40.0, 80.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "soft_tissue": (40.0, 400.0),
}


def test_presets_are_the_published_values():
    assert CT_WINDOWS == PUBLISHED


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_window_maps_its_published_ends_and_centre(name):
    level, width = PUBLISHED[name]
    hu = np.array([[level - width / 2, level, level + width / 2, level - width, level + width]], np.float32)
    got = normalize(hu, "CT", IntensityConfig(ct_window=name))
    np.testing.assert_allclose(got, [[0.0, 0.5, 1.0, 0.0, 1.0]], atol=1e-6)  # ends, centre, clipped outside


def test_lung_window_worked_example():
    # W:1500 L:-600 shows -1350..150 HU: air (-1000 HU) at (-1000 + 1350) / 1500 = 0.2333, water (0 HU) at 0.9
    got = normalize(np.array([[-1000.0, 0.0]], np.float32), "CT", IntensityConfig(ct_window="lung"))
    np.testing.assert_allclose(got, [[350 / 1500, 1350 / 1500]], rtol=1e-6)
