"""Failing disks and concurrent runs (issue 28): one clear line, a resumable cache, one writing run per cache."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data.roi_cache import DONE, RoiCache
from data.store_lock import StoreBusy, StoreLock
from localize.__main__ import main
from localize.standins import write_standins
from tests._readers_files import write_opencv

ROOT = Path(__file__).resolve().parents[1]
HOLDER = (
    "import sys, time\n"
    "from data.store_lock import StoreLock\n"
    "lock = StoreLock(sys.argv[1]).__enter__()\n"
    "print('held', flush=True)\n"
    "time.sleep(float(sys.argv[2]))\n"
    "lock.__exit__(None, None, None) if sys.argv[3] == 'release' else None\n"
)


def _hold(path: Path, seconds: float, release: bool = True) -> subprocess.Popen:
    """A process that takes the lock of `path`, says 'held', keeps it `seconds`, then exits (releasing or not)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), str(seconds), "release" if release else "keep"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert process.stdout.readline().strip() == "held"
    return process


@pytest.fixture(scope="module")
def standins(tmp_path_factory) -> Path:
    return write_standins(tmp_path_factory.mktemp("standins"))


@pytest.fixture
def corpus(tmp_path) -> Path:
    root = tmp_path / "corpus"
    rng = np.random.default_rng(0)
    for i in range(6):
        write_opencv(root / "xr" / f"img{i}.png", rng.integers(0, 256, (32, 32)).astype(np.uint8))
    return root


def _run_args(standins: Path, corpus: Path, cache: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--config",
        str(standins),
        "--corpus",
        str(corpus),
        "--cache",
        str(cache),
        "--workers",
        "0",
        "--no-progress",
        "--batch-size",
        "2",
        "--set",
        "saliency={method: similarity}",
        *extra,
    ]


# ------------------------------------------------------------------------------------------ the lock
def test_a_second_run_is_refused_naming_the_holder_then_waits_for_it(tmp_path):
    store = tmp_path / "c.zarr"
    holder = _hold(store, 2.0)
    try:
        with pytest.raises(StoreBusy) as caught, StoreLock(store, what="cache"):
            pass
        message = str(caught.value)
        assert f"pid {holder.pid} on {socket.gethostname()}" in message and "--wait SECONDS" in message
        with StoreLock(store, wait_s=60) as lock:  # waits for the holder to release it
            assert holder.wait(timeout=60) == 0  # the holder finished normally ...
            assert lock.took_over is None  # ... releasing its lock and record: nothing stale was taken over
            assert lock.holder().pid == os.getpid()
        assert lock.holder() is None  # the record goes with the lock
    finally:
        holder.kill()
        holder.wait()


def test_a_crashed_holders_stale_lock_is_taken_over(tmp_path):
    store = tmp_path / "c.zarr"
    holder = _hold(store, 60.0, release=False)
    os.kill(holder.pid, signal.SIGKILL)  # crashes while holding: its record stays behind
    holder.wait()
    assert StoreLock(store).holder().pid == holder.pid
    with StoreLock(store) as lock:
        assert lock.took_over is not None and lock.took_over.pid == holder.pid
        assert lock.took_over.alive is False
        assert lock.holder().pid == os.getpid()


def test_localize_run_refuses_a_cache_another_run_holds(tmp_path, standins, corpus, capsys):
    cache = tmp_path / "c.zarr"
    holder = _hold(cache, 30.0)
    try:
        assert main(_run_args(standins, corpus, cache)) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"error: {cache}: this cache is being written by another run: pid {holder.pid}")
        assert not cache.exists()  # refused before anything was scanned or created
    finally:
        holder.kill()
        holder.wait()


def test_cache_creation_is_atomic(tmp_path, corpus, monkeypatch):
    from data.manifest import scan_corpus

    manifest, _ = scan_corpus(corpus, workers=0, progress=False)
    cache = tmp_path / "c.zarr"

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(RoiCache, "add_item_array", full_disk)  # dies half-way through making the arrays
    with pytest.raises(OSError):
        RoiCache.create(cache, manifest, {"p": 1})
    assert not cache.exists() and list(tmp_path.iterdir()) == [corpus]  # no half-made cache, no leftover
    monkeypatch.undo()
    RoiCache.create(cache, manifest, {"p": 1})
    with pytest.raises(FileExistsError, match="already exists"):
        RoiCache.create(cache, manifest, {"p": 1})


# ------------------------------------------------------------------------------------------ failing writes
@pytest.mark.parametrize(
    ("error", "said"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "no space left on device"),
        (PermissionError(errno.EACCES, "Permission denied"), "permission denied"),
    ],
)
def test_a_failed_write_ends_in_one_line_and_the_rerun_resumes(
    tmp_path, standins, corpus, monkeypatch, capsys, error, said
):
    cache = tmp_path / "c.zarr"
    write = RoiCache.write
    calls = []

    def failing_second_write(self, indices, *args, **kwargs):
        calls.append(list(indices))
        if len(calls) == 2:
            raise error
        return write(self, indices, *args, **kwargs)

    monkeypatch.setattr(RoiCache, "write", failing_second_write)
    assert main(_run_args(standins, corpus, cache)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    # the first batch of 2 was written, the second failed: 2 of the 6 items are done
    assert err[-1] == f"error: {said} writing {cache} (2 of 6 items done; rerun the same command to resume)"
    assert not any("Traceback" in line for line in err)
    monkeypatch.undo()
    status = RoiCache.open(cache).status()
    assert (status == DONE).sum() == 2
    assert main(_run_args(standins, corpus, cache)) == 0
    out = capsys.readouterr().out
    assert "6/6 done" in out and "processed 4 items" in out  # resumed: only the 4 left were localized
    assert StoreLock(cache).holder() is None  # the failed run released its lock


def test_other_errors_are_not_disguised_as_write_failures(tmp_path):
    from localize.driver import write_error_line

    assert write_error_line(ValueError("bad"), tmp_path / "c.zarr") is None
    assert write_error_line(OSError(errno.EIO, "I/O error"), tmp_path / "c.zarr") is None
    wrapped = RuntimeError("worker failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert write_error_line(wrapped, tmp_path / "c.zarr") == (
        f"error: no space left on device writing {tmp_path / 'c.zarr'} "
        "(the cache was not created yet; rerun the same command to resume)"
    )
