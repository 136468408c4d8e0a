"""Runs the localization job over a corpus: in this process, on a local Dask cluster, or on an existing one.

With Dask, each worker holds one copy of the models (a WorkerPlugin loads them once) and processes whole
shards; workers report the items they finish through Dask's event topics, and the client counts each item once
(`job.ItemProgress`: a shard re-run after a lost worker reports its items again), showing items/s and an ETA.
With `pack_path`, the images read for localization also fill a packed image store (same items, same shards, the
run's intensity rules); items the run did not read (done before, or failed) are packed after it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from distributed.diagnostics.plugin import WorkerPlugin

from data.frame_source import ReadStats
from data.intensity import IntensityConfig
from data.manifest import read_manifest, scan_corpus
from data.packed_store import PackedStore
from data.packing import pack_corpus
from data.roi_cache import RoiCache
from data.store_lock import StoreLock
from localize.clip_loader import hub_revision
from localize.config import LocalizeConfig
from localize.job import (
    ItemProgress,
    RunSummary,
    WorkUnit,
    item_progress_bar,
    plan_units,
    process_unit,
    summarize,
    unit_sizes,
)
from localize.localizer import Localizer, localizer_provenance
from localize.volume import series_pass

log = logging.getLogger(__name__)
PLUGIN_NAME = "mwm-localizer"
PROGRESS_TOPIC = "mwm-localize-progress"
DASHBOARD_ADDRESS = ":8787"  # Dask's usual port


def create_cache(
    config: LocalizeConfig,
    corpus: Path,
    cache_path: Path,
    manifest_path: Path | None,
    provenance: dict[str, Any],
    progress: bool = True,
) -> RoiCache:
    """A new cache over `manifest_path`'s items, or over a scan of the corpus; the scan's failures (path, reason)
    go to `scan_failures_path(cache_path)`. Called once the models are loaded: a `hf-hub:` model's resolved
    revision is then in this machine's Hugging Face cache, and recorded in the cache's info."""
    info: dict[str, Any] = {}
    if manifest_path is not None:
        manifest = read_manifest(manifest_path)
    else:
        manifest, failures = scan_corpus(corpus, progress=progress, exclude=[scan_failures_path(cache_path)])
        info["corpus_files_failed_at_scan"] = int(len(failures))
        if len(failures):
            failures.to_csv(scan_failures_path(cache_path), index=False)
            log.warning(
                "%d files could not be read during the scan and are not in the cache: %s",
                len(failures),
                scan_failures_path(cache_path),
            )
    if config.clip.startswith("hf-hub:"):
        info["clip_revision"] = hub_revision(config.clip) or "unresolved: not in this machine's Hugging Face cache"
    return RoiCache.create(cache_path, manifest, provenance, geometry=config.geometry, info=info)


def scan_failures_path(cache_path: str | Path) -> Path:
    """Beside the cache: the files its corpus scan could not read, one row each (path, reason), as CSV."""
    cache_path = Path(cache_path)
    return cache_path.with_name(cache_path.name.removesuffix(".zarr") + ".scan_failures.csv")


def run_localization(
    config: LocalizeConfig,
    corpus: str | Path,
    cache_path: str | Path,
    *,
    manifest_path: str | Path | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    retry_failed: bool = False,
    progress: bool = True,
    pack_path: str | Path | None = None,
    wait_s: float = 0.0,
    dashboard: str | None = DASHBOARD_ADDRESS,
) -> RunSummary:
    """Localize every pending item of the corpus into the cache and return the run's summary.

    workers=0 runs in this process (no Dask); workers=None sizes a local Dask cluster to the machine
    (one worker per GPU, else a few CPU workers); `scheduler` connects to an existing Dask cluster.
    The models are loaded before a new cache's corpus scan, so that a bad checkpoint fails in seconds.
    `pack_path`: a packed image store to fill in the same pass (created, or resumed, for the cache's items).
    The run holds the cache's lock (`data.store_lock`) throughout: a second run on the same cache waits up to
    `wait_s` seconds for it, or refuses (StoreBusy, naming the running one). Dask workers write under the client's
    lock, each its own shards, so the cache keeps a single writing run.
    `dashboard`: the local cluster's Dask dashboard address (None: none); its link is logged, as is an existing
    cluster's.
    """
    provenance = localizer_provenance(config)
    with StoreLock(cache_path, wait_s=wait_s, what="cache"):
        return _run_locked(
            config,
            Path(corpus),
            Path(cache_path),
            provenance,
            manifest_path,
            workers,
            scheduler,
            retry_failed,
            progress,
            pack_path,
            dashboard,
        )


def _run_locked(
    config: LocalizeConfig,
    corpus: Path,
    cache_path: Path,
    provenance: dict[str, Any],
    manifest_path: str | Path | None,
    workers: int | None,
    scheduler: str | None,
    retry_failed: bool,
    progress: bool,
    pack_path: str | Path | None,
    dashboard: str | None,
) -> RunSummary:
    started = time.perf_counter()
    existing = RoiCache.open(cache_path, mode="r+", provenance=provenance) if cache_path.exists() else None
    if existing is not None and unit_sizes(_plan(existing, config, retry_failed)) == 0:
        log.info("nothing to localize: every item of %s is done", cache_path)
        _series_pass(existing, config)  # a run killed between the units and the series pass finishes it here
        summary = summarize(existing, 0, started)
        store = _open_store(pack_path, existing, config) if pack_path else None
    else:
        if existing is not None:
            log.info("resuming %s (%d items)", cache_path, existing.n_items)
        in_process = scheduler is None and workers == 0
        runner = _local_runner(config) if in_process else _dask_runner(config, workers, scheduler, dashboard)
        with runner as run_units:
            cache = existing or create_cache(
                config, corpus, cache_path, Path(manifest_path) if manifest_path else None, provenance, progress
            )
            store = _open_store(pack_path, cache, config) if pack_path else None
            units = _plan(cache, config, retry_failed)
            total = unit_sizes(units)
            bar = item_progress_bar(total, progress)
            reads = ReadStats(config.volume_cache_mb << 20)
            try:
                if total:
                    for counts in run_units(
                        units, cache, corpus, cache.manifest(), ItemProgress(bar, cache.n_items), store
                    ):
                        reads.merge(counts["reads"])
            finally:
                bar.close()
            _series_pass(cache, config)
        summary = summarize(RoiCache.open(cache_path), total, started, reads=reads if total else None)
    if store is not None:  # what the localization did not read: items done before, or failed
        summary.packed = pack_corpus(
            store, corpus, workers=1, max_bytes=config.volume_cache_mb << 20, progress=False
        ).line()
    return summary


# errno -> what the one-line error says (`write_error_line`)
_WRITE_ERRORS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
}


def write_error_line(exc: BaseException, cache_path: str | Path) -> str | None:
    """The one line a run ends with when writing its output failed for want of space or permission: what, where,
    how far the cache got, and that a rerun resumes; None for any other error (it is not a write failure)."""
    error = exc
    while error is not None and not (isinstance(error, OSError) and error.errno in _WRITE_ERRORS):
        error = error.__cause__ or error.__context__
    if error is None:
        return None
    try:
        counts = RoiCache.open(cache_path).counts()
        where = f"{counts['done']} of {counts['items']} items done"
    except (OSError, ValueError, KeyError):  # not created (creation is atomic: nothing half-made is left)
        where = "the cache was not created yet"
    return f"error: {_WRITE_ERRORS[error.errno]} writing {cache_path} ({where}; rerun the same command to resume)"


def _plan(cache: RoiCache, config: LocalizeConfig, retry_failed: bool) -> list[WorkUnit]:
    """The run's work units: batches by count and pixel budget (`localize.job.batch_slots`)."""
    return plan_units(
        cache,
        config.batch_size,
        retry_failed=retry_failed,
        batch_pixels=config.batch_pixels,
        work_max_side=config.work_max_side,
    )


def _series_pass(cache: RoiCache, config: LocalizeConfig) -> None:
    """The volume-aware rule over every finished series (`localize.volume`), after all units: whatever unit a slice
    was in, its series' other slices are in the cache by then."""
    if config.volume.enabled:
        counts = series_pass(cache, config.volume)
        log.info("volume-aware pass: %(series)d series, %(absent)d slices absent", counts)


def _open_store(path: str | Path, cache: RoiCache, config: LocalizeConfig) -> PackedStore:
    """The packed store for `--pack`: the cache's items and shards, the run's intensity rules."""
    intensity = IntensityConfig.from_fields(config.intensity)
    return PackedStore.open_or_create(path, cache.manifest(), intensity, shard_items=cache.shard_items)


def _pick_device(index: int = 0) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", index % torch.cuda.device_count())
    return torch.device("cpu")


# Runs work units: (units, cache, corpus, manifest, progress, packed store) -> each unit's counts.
UnitRunner = Callable[[list[WorkUnit], RoiCache, Path, pd.DataFrame, ItemProgress, PackedStore | None], list[dict]]


@contextlib.contextmanager
def _local_runner(config: LocalizeConfig) -> Iterator[UnitRunner]:
    """Models loaded in this process; units run one after another."""
    localizer = Localizer.from_config(config, _pick_device())
    intensity = IntensityConfig(**config.intensity)

    def run_units(units, cache, corpus, manifest, progress, store=None) -> list[dict[str, Any]]:
        max_bytes = config.volume_cache_mb << 20
        return [
            process_unit(
                u, localizer, cache, corpus, manifest, progress, intensity, max_bytes, store, config.work_max_side
            )
            for u in units
        ]

    yield run_units


# ------------------------------------------------------------------------------------------ Dask
class LocalizerPlugin(WorkerPlugin):
    """Loads the models once per Dask worker; tasks find them at `worker.plugins[PLUGIN_NAME].localizer`.

    A model that will not load is kept as `load_error` (the message) rather than raised: the client reports it
    as one line instead of every worker logging a traceback.
    """

    name = PLUGIN_NAME

    def __init__(self, config: dict[str, Any], threads: int | None) -> None:
        self.config = config
        self.threads = threads
        self.localizer: Localizer | None = None
        self.load_error: str | None = None

    def setup(self, worker) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        # One GPU per worker: local workers are named 0..n-1; elsewhere use the worker's visible device.
        index = worker.name if isinstance(worker.name, int) else 0
        try:
            self.localizer = Localizer.from_config(LocalizeConfig(**self.config), _pick_device(index))
        except (RuntimeError, ValueError, OSError) as e:  # ClipLoadError, SamLoadError, bad parameters
            self.load_error = f"worker {worker.name}: {e}"


def _load_error(dask_worker) -> str | None:
    return dask_worker.plugins[PLUGIN_NAME].load_error


def _dask_unit(
    unit: WorkUnit, rows: pd.DataFrame, cache_path: str, corpus: str, store_path: str | None
) -> dict[str, Any]:
    from distributed import get_worker

    worker = get_worker()
    plugin = worker.plugins[PLUGIN_NAME]
    if plugin.localizer is None:  # a worker that joined later and could not load the models
        raise RuntimeError(plugin.load_error)
    cache = RoiCache.open(cache_path, mode="r+")
    config = LocalizeConfig(**plugin.config)
    return process_unit(
        unit,
        plugin.localizer,
        cache,
        Path(corpus),
        rows,
        on_progress=lambda items: worker.log_event(PROGRESS_TOPIC, {"items": [int(i) for i in items]}),
        intensity=IntensityConfig(**config.intensity),
        max_bytes=config.volume_cache_mb << 20,
        store=PackedStore.open(store_path, mode="r+") if store_path else None,
        work_max_side=config.work_max_side,
    )


def local_cluster_size() -> tuple[int, int]:
    """(workers, torch threads per worker) for a local cluster sized to this machine."""
    if torch.cuda.is_available():
        return torch.cuda.device_count(), max(1, (os.cpu_count() or 1) // torch.cuda.device_count())
    cores = os.cpu_count() or 1
    workers = max(1, min(4, cores // 2))
    return workers, max(1, cores // workers)


@contextlib.contextmanager
def _dask_runner(
    config: LocalizeConfig, workers: int | None, scheduler: str | None, dashboard: str | None = DASHBOARD_ADDRESS
) -> Iterator[UnitRunner]:
    """A local cluster (or `scheduler`'s) whose workers have loaded the models; units run as one task each."""
    from distributed import Client, LocalCluster, as_completed

    threads = None
    if scheduler is None:
        n, threads = local_cluster_size()
        n = n if workers is None else workers
        threads = threads if workers is None else max(1, (os.cpu_count() or 1) // n)
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=dashboard)
        client = Client(cluster)
    else:
        cluster, client = None, Client(scheduler)
    try:
        if dashboard is not None or scheduler is not None:  # an address in use: Dask picks another, shown here
            log.info("Dask dashboard: %s", client.dashboard_link)
        client.register_plugin(LocalizerPlugin(config.to_dict(), threads), name=PLUGIN_NAME)
        errors = [e for e in client.run(_load_error).values() if e]
        if errors:
            raise RuntimeError(errors[0])

        def run_units(units, cache, corpus, manifest, progress, store=None) -> list[dict[str, Any]]:
            client.subscribe_topic(PROGRESS_TOPIC, lambda event: progress(event[1]["items"]))
            # Each task gets its own rows of the manifest: no worker re-reads the whole item table per shard.
            store_path = str(store.path) if store is not None else None
            futures = [
                client.submit(
                    _dask_unit, u, manifest.loc[u.items], str(cache.path), str(corpus), store_path, pure=False
                )
                for u in units
            ]
            return [future.result() for future in as_completed(futures)]  # re-raises a worker's error here

        yield run_units
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
