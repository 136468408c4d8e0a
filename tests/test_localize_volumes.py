"""Localization reads each volume once per shard: the same cache as item-by-item reading, and packing in the same
pass gives the store `data pack` gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from data.intensity import IntensityConfig
from data.item_store import DONE
from data.packed_store import PackedStore
from data.packing import pack_corpus
from data.roi_cache import RoiCache
from localize.config import LocalizeConfig
from localize.driver import run_localization
from localize.standins import write_standins
from tests.packed_fixtures import write_mixed_corpus

SETTINGS = ["saliency={method: similarity}", "batch_size=4", "geometry.shard_items=8", "intensity={ct_window: lung}"]


@pytest.fixture(scope="module")
def standins(tmp_path_factory) -> Path:
    return write_standins(tmp_path_factory.mktemp("standins"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_mixed_corpus(tmp_path_factory.mktemp("mixed"), volumes=2, slices=10)


def cache_arrays(path: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(path, mode="r")
    names = ("mask", "saliency", "boxes", "rects", "score", "flags", "status", "reason")
    return {name: group[name][:] for name in names}


def test_volume_aware_localization_equals_item_by_item_and_packs_in_the_same_pass(tmp_path, standins, corpus):
    by_item = LocalizeConfig.load(standins, [*SETTINGS, "volume_cache_mb=0"])
    item_summary = run_localization(by_item, corpus, tmp_path / "items.zarr", workers=0, progress=False)
    aware = LocalizeConfig.load(standins, SETTINGS)
    summary = run_localization(
        aware, corpus, tmp_path / "volumes.zarr", workers=0, progress=False, pack_path=tmp_path / "p.zarr"
    )
    a, b = cache_arrays(tmp_path / "items.zarr"), cache_arrays(tmp_path / "volumes.zarr")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert (b["status"] == DONE).all()
    # shards of 8 items: DICOM 0-3 + vol_0 0-3 | vol_0 4-9 + vol_1 0-1 | vol_1 2-9 | PNGs: 5 decodes serve 24 items
    assert item_summary.reads.file_decodes == 0 and item_summary.reads.frame_reads == summary.items
    assert summary.reads.file_decodes == 5 and summary.reads.held_reads == 20 + 4 - 5
    assert "reads: 5 file decodes" in summary.line() and "pack: " in summary.line()

    # the store filled in the same pass is the one `data pack --cache` makes from the same cache
    cache = RoiCache.open(tmp_path / "volumes.zarr")
    packed = PackedStore.open(tmp_path / "p.zarr")
    assert packed.intensity.differences(IntensityConfig(ct_window="lung")) == [] and packed.shard_items == 8
    separate = PackedStore.create(
        tmp_path / "s.zarr", cache.manifest(), IntensityConfig(ct_window="lung"), shard_items=8
    )
    pack_corpus(separate, corpus, progress=False)
    for name in ("image", "image_rgb", "stored_hw", "channels", "status"):
        np.testing.assert_array_equal(packed._group[name][:], separate._group[name][:], err_msg=name)
    assert "processed 0 items" in summary.packed  # nothing was left for the pass after localization


def test_pack_joins_an_existing_cache_and_fills_what_it_lacks(tmp_path, standins, corpus):
    config = LocalizeConfig.load(standins, SETTINGS)
    run_localization(config, corpus, tmp_path / "c.zarr", workers=0, progress=False)
    summary = run_localization(
        config, corpus, tmp_path / "c.zarr", workers=0, progress=False, pack_path=tmp_path / "p.zarr"
    )
    assert summary.processed == 0 and summary.packed.startswith(f"pack: {summary.items}/{summary.items} done")
    assert (PackedStore.open(tmp_path / "p.zarr").status() == DONE).all()
