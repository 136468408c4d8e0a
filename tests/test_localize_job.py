"""The localization job end to end with the tiny stand-ins: cache contents, batching, resume, failures, Dask."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import zarr

from data.manifest import scan_corpus
from data.readers import load_image
from data.roi_cache import DONE, FLAG_EMPTY_ROI, RoiCache
from data.roi_rects import expanded_rects, fill_rects
from data.sample import write_sample_corpus
from localize.config import ConfigError, LocalizeConfig
from localize.driver import run_localization
from localize.evaluate import evaluate_cache
from localize.localizer import Localizer
from localize.standins import write_standins

ROOT = Path(__file__).resolve().parents[1]
FAST = ["saliency={method: similarity}", "batch_size=4"]


@pytest.fixture(scope="module")
def standins(tmp_path_factory) -> Path:
    return write_standins(tmp_path_factory.mktemp("standins"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    write_sample_corpus(out, n=3, seed=0, size=64)
    return out


def cache_arrays(path: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(path, mode="r")
    return {name: group[name][:] for name in ("mask", "saliency", "boxes", "score", "flags", "status", "reason")}


def assert_same_cache(a: Path, b: Path) -> None:
    arrays_a, arrays_b = cache_arrays(a), cache_arrays(b)
    for name in arrays_a:
        np.testing.assert_array_equal(arrays_a[name], arrays_b[name], err_msg=name)


def test_end_to_end_into_cache_and_eval(tmp_path, standins, corpus):
    # the release's M2IB with fewer steps and noise copies
    config = LocalizeConfig.load(standins, ["saliency.steps=2", "saliency.noise_samples=2", "batch_size=4"])
    summary = run_localization(config, corpus, tmp_path / "c.zarr", workers=0, progress=False)
    manifest, _ = scan_corpus(corpus, progress=False)
    assert summary.items == len(manifest) and summary.done == len(manifest) and summary.failed == 0
    cache = RoiCache.open(tmp_path / "c.zarr")
    assert cache.provenance["untrained"] is True
    assert cache.provenance["saliency"]["method"] == "m2ib" and cache.provenance["saliency"]["steps"] == 2
    assert len(cache.provenance["clip"]["sha256"]) == 64 and len(cache.provenance["sam"]["sha256"]) == 64
    assert (cache.status() == DONE).all()
    sizes = cache.manifest()[["height", "width"]].to_numpy()
    for i in range(cache.n_items):
        record = cache.read_record(i)
        roi = cache.read_mask(i)
        assert roi.shape == tuple(sizes[i])
        assert record["empty_roi"] == (roi.sum() == 0)
        assert 0.0 <= cache.read_saliency(i).min() and cache.read_saliency(i).max() <= 1.0
        assert len(cache.read_boxes(i)) >= (not record["empty_roi"])
        # the stored rectangles are the release's expanded ROI of the stored (here lossless: 64 px < 256) mask
        np.testing.assert_array_equal(cache.read_mask(i, shape="rect"), fill_rects(expanded_rects(roi), roi.shape))
    scores, report = evaluate_cache(cache, corpus / "truth")
    assert report["evaluated"] == len(manifest) and set(report["per_modality"]) == {"CT", "MR", "XR"}
    assert ((scores.dice >= 0) & (scores.dice <= 1)).all() and report["untrained_models"] is True


def test_batched_equals_one_image_at_a_time(standins, corpus):
    config = LocalizeConfig.load(standins, ["saliency.steps=3", "saliency.noise_samples=2"])
    localizer = Localizer.from_config(config)
    manifest, _ = scan_corpus(corpus, progress=False)
    rows = manifest.iloc[[0, 3, 5, 8]]  # mixed modalities and sizes in one batch
    images = [load_image(corpus, r.path, r.frame, r.modality) for r in rows.itertuples()]
    batched = localizer(images, list(rows.modality))
    for image, modality, b in zip(images, rows.modality, batched, strict=True):
        (single,) = localizer([image], [modality])
        np.testing.assert_allclose(single.saliency_hw, b.saliency_hw, atol=1e-4)
        assert (single.roi_hw != b.roi_hw).mean() < 1e-3  # identical up to float noise at the mask edge
        np.testing.assert_array_equal(single.boxes_k4, b.boxes_k4)
        np.testing.assert_array_equal(single.rects_k4, b.rects_k4)


def _run_cli(*args: str, env_extra: dict | None = None, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "localize", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path, standins, corpus):
    common = [
        "--config",
        str(standins),
        "--corpus",
        str(corpus),
        "--workers",
        "0",
        "--no-progress",
        "--set",
        "saliency={method: similarity}",
        "--set",
        "batch_size=1",
        "--set",
        "geometry.shard_items=4",
    ]
    killed = tmp_path / "killed.zarr"
    proc = _run_cli("run", "--cache", str(killed), *common)
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if (killed / "status").exists():
            done = int((zarr.open_group(killed, mode="r")["status"][:] == DONE).sum())
            if done >= 2:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = RoiCache.open(killed).summary()
    assert 0 < partial["done"] < partial["items"], f"the kill should land mid-run: {partial}"

    resumed = _run_cli("run", "--cache", str(killed), *common)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"processed {partial['items'] - partial['done']} items" in out  # only what was missing
    straight = _run_cli("run", "--cache", str(tmp_path / "straight.zarr"), *common)
    _, err = straight.communicate(timeout=300)
    assert straight.returncode == 0, err
    assert_same_cache(killed, tmp_path / "straight.zarr")


def test_provenance_refusal_from_the_command_line(tmp_path, standins, corpus):
    config = LocalizeConfig.load(standins, FAST)
    run_localization(config, corpus, tmp_path / "c.zarr", workers=0, progress=False)
    proc = _run_cli(
        "run",
        "--config",
        str(standins),
        "--corpus",
        str(corpus),
        "--cache",
        str(tmp_path / "c.zarr"),
        "--workers",
        "0",
        "--set",
        "saliency={method: similarity}",
        "--set",
        "refine.threshold=0.5",
    )
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "refine.threshold" in err and "0.3" in err and "0.5" in err and "new cache" in err


def test_empty_saliency_and_corrupt_item(tmp_path, standins):
    corpus = tmp_path / "corpus" / "xray"
    corpus.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        cv2.imwrite(str(corpus / f"img_{i}.png"), (rng.random((48, 56)) * 255).astype(np.uint8))
    cv2.imwrite(str(corpus / "img_flat.png"), np.full((48, 56), 128, np.uint8))  # nothing stands out
    manifest, failures = scan_corpus(corpus.parent, progress=False)
    assert len(failures) == 0
    (corpus / "img_3.png").write_bytes(b"\x89PNG\r\n\x1a\n broken after the scan")  # decodes no more

    config = LocalizeConfig.load(standins, FAST)
    manifest.to_parquet(tmp_path / "m.parquet")
    summary = run_localization(
        config, corpus.parent, tmp_path / "c.zarr", manifest_path=tmp_path / "m.parquet", workers=0, progress=False
    )
    cache = RoiCache.open(tmp_path / "c.zarr")
    table = cache.table().set_index("path")
    assert summary.failed == 1 and summary.done == 5
    assert table.loc["xray/img_3.png", "status"] == "failed" and "img_3.png" in table.loc["xray/img_3.png", "reason"]
    assert table.loc["xray/img_flat.png", "status"] == "done" and table.loc["xray/img_flat.png", "empty_roi"]
    flat = int(np.flatnonzero(cache.manifest().path == "xray/img_flat.png")[0])
    assert cache.read_mask(flat).sum() == 0 and zarr.open_group(tmp_path / "c.zarr")["flags"][flat] & FLAG_EMPTY_ROI
    # a re-run does nothing; --retry-failed tries the failed item again (still failing, still recorded)
    assert run_localization(config, corpus.parent, tmp_path / "c.zarr", workers=0, progress=False).processed == 0
    before = cache_arrays(tmp_path / "c.zarr")
    again = run_localization(config, corpus.parent, tmp_path / "c.zarr", workers=0, retry_failed=True, progress=False)
    assert again.processed >= 1 and again.failed == 1  # its batch slot is recomputed whole ...
    for name, values in cache_arrays(tmp_path / "c.zarr").items():  # ... to exactly the same results
        np.testing.assert_array_equal(values, before[name], err_msg=name)


def test_two_worker_dask_run_equals_single_process(tmp_path, standins, corpus):
    overrides = [*FAST, "geometry.shard_items=4"]
    config = LocalizeConfig.load(standins, overrides)
    single = run_localization(config, corpus, tmp_path / "single.zarr", workers=0, progress=False)
    dask = run_localization(config, corpus, tmp_path / "dask.zarr", workers=2, progress=False)
    assert single.done == dask.done == single.items
    assert_same_cache(tmp_path / "single.zarr", tmp_path / "dask.zarr")


def test_intensity_settings_reach_the_models_and_the_provenance(tmp_path, standins, corpus):
    lung = LocalizeConfig.load(standins, [*FAST, "intensity={ct_window: lung}"])
    bone = LocalizeConfig.load(standins, [*FAST, "intensity={ct_window: bone}"])
    run_localization(lung, corpus, tmp_path / "lung.zarr", workers=0, progress=False)
    run_localization(bone, corpus, tmp_path / "bone.zarr", workers=0, progress=False)
    a, b = RoiCache.open(tmp_path / "lung.zarr"), RoiCache.open(tmp_path / "bone.zarr")
    assert a.provenance["intensity"] == {"ct_window": "lung"}
    ct = np.flatnonzero(a.manifest().modality == "CT")
    mr = np.flatnonzero(a.manifest().modality == "MR")
    assert any(not np.array_equal(a.read_saliency(i), b.read_saliency(i)) for i in ct)  # CT images differ
    assert all(np.array_equal(a.read_saliency(i), b.read_saliency(i)) for i in mr)  # a CT window leaves MR alone
    with pytest.raises(ConfigError, match="intensity"):
        LocalizeConfig.load(standins, ["intensity={ct_window: nosuchwindow}"])


@pytest.mark.parametrize("workers", [0, 2], ids=["in_process", "dask"])
def test_a_model_that_will_not_load_fails_before_the_scan(tmp_path, standins, corpus, capfd, workers):
    noise = tmp_path / "noise.pth"
    noise.write_bytes(bytes(range(256)) * 4)
    config = LocalizeConfig.load(standins, [*FAST, f"sam=vit_b:{noise}"])
    with pytest.raises(RuntimeError, match=r"noise\.pth.*not a plain tensor checkpoint"):
        run_localization(config, corpus, tmp_path / "c.zarr", workers=workers, progress=False)
    assert not (tmp_path / "c.zarr").exists()  # the corpus was not scanned, no cache was made
    # One line from the client: no traceback of the load failure from the workers (Dask's own shutdown chatter,
    # such as a heartbeat racing the cluster's close, is not ours to assert on).
    err = capfd.readouterr().err
    assert "sam_loader.py" not in err and "plugin_add" not in err


def test_scan_failures_beside_the_cache_and_no_progress_output(tmp_path, standins, corpus):
    """`localize run --no-progress` prints no progress bar at all (scan, items), only its lines; the files the scan
    could not read are listed, with their reason, beside the cache; the cache records the code version."""
    from data.provenance import code_version
    from localize.driver import scan_failures_path

    broken = tmp_path / "corpus"
    shutil.copytree(corpus, broken)
    (broken / "xray" / "broken.png").parent.mkdir(exist_ok=True)
    (broken / "xray" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    cache = tmp_path / "c.zarr"
    proc = _run_cli(
        "run", "--config", str(standins), "--corpus", str(broken), "--cache", str(cache), "--workers", "0",
        "--no-progress", "--set", "saliency={method: similarity}", "--set", "batch_size=4",
    )  # fmt: skip
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "%|" not in err + out and "it/s" not in err + out and "\r" not in err + out  # no tqdm bar anywhere
    assert "processed" in out  # the summary line is still printed
    failures = pd.read_csv(scan_failures_path(cache))
    assert scan_failures_path(cache) == tmp_path / "c.scan_failures.csv"
    assert failures["path"].tolist() == ["xray/broken.png"] and failures["reason"].str.len().gt(0).all()
    opened = RoiCache.open(cache)
    assert opened.info["corpus_files_failed_at_scan"] == 1 and opened.info["code_version"] == code_version()
    assert "xray/broken.png" not in set(opened.manifest()["path"])
    assert opened.provenance["localizer_version"] == 2 and "code_version" not in opened.provenance


def test_workers_started_for_an_existing_scheduler_run_the_job(tmp_path, standins, corpus, caplog):
    """docs/CONFIG.md's recipe for an existing cluster, on this machine: `dask scheduler`, then `dask worker ADDR
    --nthreads 1` (one worker, as on one GPU); `localize run --scheduler ADDR` gives the same cache as in-process."""
    dask = Path(sys.executable).with_name("dask")
    if not dask.is_file():
        pytest.skip("no `dask` command next to this interpreter")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env, "cwd": tmp_path}
    scheduler = subprocess.Popen(
        [str(dask), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0"], **quiet
    )
    worker = subprocess.Popen([str(dask), "worker", address, "--nthreads", "1", "--nworkers", "1"], **quiet)
    try:
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(1, timeout=120)
        config = LocalizeConfig.load(standins, [*FAST, "geometry.shard_items=4"])
        with caplog.at_level(logging.INFO, logger="localize"):
            remote = run_localization(config, corpus, tmp_path / "remote.zarr", scheduler=address, progress=False)
        assert any(r.getMessage().startswith("Dask dashboard: http") for r in caplog.records)
        single = run_localization(config, corpus, tmp_path / "single.zarr", workers=0, progress=False)
        assert remote.done == single.done == single.items
        assert_same_cache(tmp_path / "single.zarr", tmp_path / "remote.zarr")
    finally:
        for proc in (worker, scheduler):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
