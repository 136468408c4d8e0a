"""`python -m data pack`: two processes on distinct shards, SIGKILL + resume, intensity from the cache."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from data.intensity import IntensityConfig
from data.item_store import DONE
from data.manifest import scan_corpus
from data.packed_store import PackedStore
from data.roi_cache import RoiCache
from tests.packed_fixtures import MAX_SIDE, write_mixed_corpus

ROOT = Path(__file__).resolve().parents[1]
STORE_ARRAYS = ("image", "image_rgb", "stored_hw", "channels", "status", "reason", "item_id")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_mixed_corpus(tmp_path_factory.mktemp("mixed"), volumes=6, slices=8)


def pack(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "data", "pack", "--no-progress", "--max-side", str(MAX_SIDE), *args]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out


def assert_same_store(a: Path, b: Path) -> None:
    ga, gb = zarr.open_group(a, mode="r"), zarr.open_group(b, mode="r")
    assert ga.attrs["provenance"] == gb.attrs["provenance"]
    for name in STORE_ARRAYS:
        np.testing.assert_array_equal(ga[name][:], gb[name][:], err_msg=name)
    assert (ga["status"][:] == DONE).all()


def test_two_processes_on_distinct_shards_build_the_one_process_store(tmp_path, corpus):
    common = ["--corpus", str(corpus), "--workers", "1", "--shard-items", "4"]
    finish(pack(*common, "--out", str(tmp_path / "one.zarr")))
    both = [pack(*common, "--out", str(tmp_path / "two.zarr"), "--part", f"{k}/2") for k in (0, 1)]  # racing to create
    outs = [finish(proc) for proc in both]
    assert_same_store(tmp_path / "one.zarr", tmp_path / "two.zarr")
    processed = [int(re.search(r"processed (\d+) items", out).group(1)) for out in outs]
    assert sum(processed) == PackedStore.open(tmp_path / "two.zarr").n_items and min(processed) > 0  # no shard twice


def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path, corpus):
    common = ["--corpus", str(corpus), "--workers", "1", "--shard-items", "2", "--volume-cache-mb", "0"]
    killed = tmp_path / "killed.zarr"
    proc = pack(*common, "--out", str(killed))
    deadline, done = time.monotonic() + 120, 0
    while time.monotonic() < deadline and proc.poll() is None:
        if (killed / "status").exists():
            done = int((zarr.open_group(killed, mode="r")["status"][:] == DONE).sum())
            if done >= 2:
                break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = PackedStore.open(killed).counts()
    assert 0 < partial["done"] < partial["items"], f"the kill should land mid-run: {partial}"
    out = finish(pack(*common, "--out", str(killed)))
    assert f"processed {partial['items'] - partial['done']} items" in out  # only what was missing
    finish(pack(*common, "--out", str(tmp_path / "straight.zarr")))
    assert_same_store(killed, tmp_path / "straight.zarr")


def test_intensity_follows_the_cache_and_an_override_is_warned_then_refused(tmp_path, corpus):
    manifest, _ = scan_corpus(corpus, workers=1, progress=False)
    cache = tmp_path / "c.zarr"
    RoiCache.create(cache, manifest, {"intensity": {"ct_window": "lung"}}, mask_size=16, shard_items=8)
    finish(pack("--corpus", str(corpus), "--cache", str(cache), "--out", str(tmp_path / "s.zarr"), "--workers", "1"))
    store = PackedStore.open(tmp_path / "s.zarr")
    assert store.intensity.differences(IntensityConfig(ct_window="lung")) == [] and store.shard_items == 8
    assert store.manifest()["item_id"].tolist() == manifest["item_id"].tolist()

    override = ["--intensity", "{ct_window: bone}", "--workers", "1"]
    warned = pack("--corpus", str(corpus), "--cache", str(cache), "--out", str(tmp_path / "bone.zarr"), *override)
    _, err = warned.communicate(timeout=300)
    assert warned.returncode == 0 and "IntensityOverride" in err and 'ct_window: "bone" vs "lung"' in err
    refused = pack("--corpus", str(corpus), "--cache", str(cache), "--out", str(tmp_path / "s.zarr"), *override)
    _, err = refused.communicate(timeout=300)
    assert refused.returncode == 2 and "s.zarr" in err and 'ct_window: "bone" vs [-600.0, 1500.0]' in err
