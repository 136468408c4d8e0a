"""Runs a study's steps, each as its own subprocess in its own folder, skipping those already done.

Every step (`python -m localize import|run`, `python -m pretrain fit` + `export`, `python -m finetune TASK fit`)
runs in a folder of the study's layout (study.layout) and leaves `done.json` there when it finished; a step whose
`done.json` exists is not run again, so an interrupted study resumes where it stopped. At the end the report
(study.report) collects every finished run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from data.portable import portable
from study.arms import Arm
from study.config import Downstream, ExperimentConfig, ExperimentError, as_flags
from study.layout import LOG_FILE, StudyLayout, as_recorded, read_done, write_done
from study.matched import GridSetting, TrainingItems, calibrate, calibration_setting
from study.report import write_report
from study.rois import roi_command


@dataclass
class RunSummary:
    launched: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    not_applicable: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: float = 0.0  # CPU seconds of the steps launched (user + system, their subprocesses only)

    def line(self) -> str:
        return (
            f"experiment: launched {self.launched} runs, {self.skipped} already finished, "
            f"{len(self.failed)} failed, {len(self.not_applicable)} not applicable; {self.wall_s:.0f} s, "
            f"{self.cpu_s:.0f} CPU-s in the launched steps"
        )


class ExperimentRunner:
    """Runs the steps of an ExperimentConfig that have no done.json yet, then writes the report.

    ROI caches and matched ratios are made first, one at a time; then the (arm, seed) chains (pretraining,
    export, downstream runs) run `config.jobs` at a time, each step a subprocess with `config.env` added to
    the environment."""

    def __init__(self, config: ExperimentConfig, *, python: str = sys.executable, echo: bool = True) -> None:
        self.config = config
        self.layout = StudyLayout(config.out)
        self.python = python
        self.echo = echo
        self.summary = RunSummary()
        self.env = {**os.environ, **config.env}
        self._caches: dict[str, Path | None] = {}
        self._missing: dict[str, str] = {}  # ROI source -> why it has no cache here
        self._lock = threading.Lock()  # the summary and the console, shared by the chains

    # ---------------------------------------------------------------- steps
    def step(self, run_dir: Path, argv: list[str], collect) -> dict[str, Any] | None:
        """Run `python -m argv` in run_dir unless it is done; `collect()` -> the done record."""
        record = read_done(run_dir)
        if record is not None:
            with self._lock:
                self.summary.skipped += 1
            return record
        if run_dir.exists():  # an unfinished earlier attempt: start it over
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        label = self.layout.label(run_dir)
        with self._lock:
            self.summary.launched += 1
            self._say(f"[{self.summary.launched}] {label}: python -m {' '.join(argv[:3])} ...")
        started = time.perf_counter()
        with open(run_dir / LOG_FILE, "w") as log:
            log.write("python -m " + " ".join(portable(argv)) + "\n\n")
            log.flush()
            code, cpu_s = _run_child([self.python, "-m", *argv], log, self.env)
        if code != 0:
            tail = "\n    ".join((run_dir / LOG_FILE).read_text().splitlines()[-8:])
            self._fail(label, f"FAILED (exit {code}); log: {run_dir / LOG_FILE}\n    {tail}")
            return None
        try:
            command = "python -m " + " ".join(portable(argv))  # paths relative to the working directory
            record = {**collect(), "command": command, "wall_s": time.perf_counter() - started}
            record["cpu_s"] = cpu_s
        except (ExperimentError, OSError, ValueError, KeyError) as e:
            self._fail(label, f"FAILED collecting its outputs: {e}")
            return None
        write_done(run_dir, record)
        with self._lock:
            self.summary.cpu_s += cpu_s or 0.0
            self._say(f"    {label}: done in {record['wall_s']:.0f} s ({cpu_s or 0:.0f} CPU-s)")
        return record

    def _fail(self, label: str, message: str) -> None:
        with self._lock:
            self.summary.failed.append(label)
            self._say(f"    {label}: {message}")

    def _say(self, text: str) -> None:
        if self.echo:
            print(text, flush=True)

    # ---------------------------------------------------------------- ROI sources
    def roi_cache(self, name: str) -> Path | None:
        """The cache of ROI source `name`, made (once) if needed; None when an optional input is missing."""
        if name not in self._caches:
            self._caches[name] = self._make_roi_cache(name)
        return self._caches[name]

    def _make_roi_cache(self, name: str) -> Path | None:
        source, corpus = self.config.rois[name], self.config.corpus
        if source.kind == "cache":
            return Path(source.path)
        origin = None
        missing = source.missing_input(corpus)
        if missing is not None:
            if source.optional:
                self._missing[name] = missing
                return None
            raise ExperimentError(f"ROI source {name}: {missing}")
        if source.kind == "shuffled":
            origin = self.roi_cache(source.from_source)
            if origin is None:
                self._missing[name] = f"its origin {source.from_source} has none"
                return None
        cache = self.layout.roi_cache(name)
        argv = roi_command(source, corpus, cache, origin)
        record = self.step(self.layout.roi_dir(name), argv, lambda: {"cache": str(cache.resolve())})
        if record is None:
            self._missing[name] = "making its cache failed"
        return cache if record else None

    # ---------------------------------------------------------------- matched ratios
    def matched(self, arm: Arm) -> Arm | None:
        """A matched random arm at the ratio its calibration sets (computed once, then read from its done.json
        while the pretraining settings it used are unchanged; computed again when they changed); None when its
        target's ROIs are missing here."""
        target = next(a for a in self.config.arms if a.name == arm.matches)
        run_dir = self.layout.calibration_dir(arm.name)
        record = read_done(run_dir)
        grid = GridSetting.from_pretrain_config(self.config.pretrain_config, self.config.pretrain_args)
        items = TrainingItems.from_pretrain_config(self.config.pretrain_config, self.config.pretrain_args)
        if record is not None and record.get("setting") != as_recorded(calibration_setting(grid, items), run_dir):
            self._say(f"calibration of {arm.name}: the pretraining settings changed since it was made; recalibrating")
            previous, record = record["mask_ratio"], None
        else:
            previous = None
        if record is None:
            cache = self.roi_cache(target.rois)
            if cache is None:
                return None
            record = calibrate(self.config.corpus, cache, target, grid, items)
            run_dir.mkdir(parents=True, exist_ok=True)
            write_done(run_dir, record)
            self._say(
                f"calibration: {target.name} realises {record['target_realised_ratio']:.4f} on the "
                f"{record['grid'][0]}x{record['grid'][1]} grid ({record['items']} training items) -> {arm.name} "
                f"masks at {record['mask_ratio']:.4f}"
            )
            if previous is not None and previous != record["mask_ratio"]:
                self._say(
                    f"    {arm.name}: its finished runs were made at {previous:.4f}; they are kept (remove "
                    f"{self.layout.out / 'runs' / arm.name}/s* to run them again)"
                )
        return arm.with_ratio(record["mask_ratio"])

    # ---------------------------------------------------------------- arms
    def pretrain(self, arm: Arm, seed: int, cache: Path) -> dict[str, Any] | None:
        run_dir, backbone = self.layout.pretrain_dir(arm.name, seed), self.layout.backbone(arm.name, seed)
        argv = [
            "pretrain",
            "fit",
            "--config",
            self.config.pretrain_config,
            "--data.corpus",
            str(self.config.corpus),
            "--data.cache",
            str(cache),
            *arm.pretrain_args(),
            "--trainer.default_root_dir",
            str(run_dir),
            "--seed_everything",
            str(seed),
            *as_flags(self.config.pretrain_args),
        ]

        def collect() -> dict[str, Any]:
            version = _newest_version(run_dir)
            ckpt = version / "checkpoints" / "last.ckpt"
            export = subprocess.run(
                [self.python, "-m", "pretrain", "export", str(ckpt), "--out", str(backbone)],
                capture_output=True,
                text=True,
                env=self.env,
            )
            if export.returncode != 0:
                raise ExperimentError(f"export of {version} failed:\n{export.stderr[-2000:]}")
            return {"backbone": str(backbone.resolve()), **mask_statistics(version / "metrics.csv")}

        return self.step(run_dir, argv, collect)

    def downstream(self, arm: Arm, seed: int, task: Downstream, init: str) -> dict[str, Any] | None:
        run_dir = self.layout.downstream_dir(arm.name, seed, task.name)
        results_dir = self.layout.results_dir(arm.name, seed, task.name)
        argv = [
            "finetune",
            task.task,
            "fit",
            "--config",
            task.config,
            "--data.root",
            str(self.config.corpus),
            "--model.init",
            init,
            "--seed_everything",
            str(seed),
            "--results_dir",
            str(results_dir),
            "--trainer.default_root_dir",
            str(run_dir / "lightning"),
            *as_flags(task.args),
        ]

        def collect() -> dict[str, Any]:
            files = sorted(results_dir.glob("*.json"))
            if len(files) != 1:
                raise ExperimentError(f"{results_dir}: expected one results JSON, found {len(files)}")
            return {"results": str(files[0].resolve()), "metrics": json.loads(files[0].read_text())["metrics"]}

        return self.step(run_dir, argv, collect)

    # ---------------------------------------------------------------- the study
    def prepare(self, arm: Arm) -> tuple[Arm, Path | None] | None:
        """The arm ready to run (a matched arm with its ratio) and its ROI cache; None (with a note) when its
        ROIs, or those of the arm it matches, have no input here."""
        if not arm.pretrains:
            return arm, None
        sources = [arm.rois] + ([] if arm.matches is None else [self._arm(arm.matches).rois])
        caches = [self.roi_cache(name) for name in sources]
        for name, cache in zip(sources, caches, strict=True):
            if cache is None:
                why = self._missing.get(name, "no input here")
                self.summary.not_applicable.append(f"arm {arm.name}: ROI source {name}: {why}")
                return None
        return (self.matched(arm) if arm.matches is not None else arm), caches[0]

    def _arm(self, name: str) -> Arm:
        return next(a for a in self.config.arms if a.name == name)

    def chain(self, arm: Arm, cache: Path | None, seed: int, tasks: list[Downstream]) -> None:
        """One (arm, seed): pretraining (unless the arm has none), then every downstream run."""
        init = "scratch"
        if cache is not None:
            record = self.pretrain(arm, seed, cache)
            if record is None:
                return
            init = str(self.layout.backbone(arm.name, seed))
        for task in tasks:
            self.downstream(arm, seed, task, init)

    def run(self) -> RunSummary:
        started = time.perf_counter()
        cfg = self.config
        cfg.out.mkdir(parents=True, exist_ok=True)
        self._ensure_corpus()
        tasks = [d for d in cfg.downstream if all((cfg.corpus / r).exists() for r in d.requires)]
        for d in cfg.downstream:
            if d not in tasks:
                self.summary.not_applicable.append(f"downstream {d.name}: the corpus lacks {list(d.requires)}")
        ready = [prepared for prepared in map(self.prepare, cfg.arms) if prepared is not None]
        chains = [(arm, cache, seed) for arm, cache in ready for seed in cfg.seeds]
        with ThreadPoolExecutor(max_workers=cfg.jobs) as pool:  # the steps are subprocesses: threads just wait
            for done in [pool.submit(self.chain, arm, cache, seed, tasks) for arm, cache, seed in chains]:
                done.result()
        for note in self.summary.not_applicable:
            self._say(f"skipped: {note}")
        for kind, path in write_report(cfg).items():
            self._say(f"{kind}: {path}")
        self.summary.wall_s = time.perf_counter() - started
        self._say(self.summary.line())
        return self.summary

    def _ensure_corpus(self) -> None:
        cfg = self.config
        if cfg.corpus.is_dir():
            return
        if not cfg.sample:
            raise ExperimentError(f"{cfg.corpus}: corpus not found (or give a 'sample:' section to make one)")
        argv = ["data", "sample", "--out", str(cfg.corpus), *[f"--{k}={v}" for k, v in cfg.sample.items()]]
        self._say(f"making the sample corpus: python -m {' '.join(argv)}")
        subprocess.run([self.python, "-m", *argv], check=True, capture_output=True, env=self.env)


def _run_child(argv: list[str], log, env: dict[str, str]) -> tuple[int, float | None]:
    """Run `argv` with its output in `log`; -> (exit code, its CPU seconds, user + system, where the OS reports
    them per child: what the step costs on an idle core, whatever else the machine was doing)."""
    child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    if not hasattr(os, "wait4"):
        return child.wait(), None
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, usage.ru_utime + usage.ru_stime


def _newest_version(run_dir: Path) -> Path:
    versions = sorted((run_dir / "logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    if not versions:
        raise ExperimentError(f"{run_dir}: no logs/version_N folder after pretraining")
    return versions[-1]


def mask_statistics(metrics_csv: Path) -> dict[str, float | None]:
    """Averages over the run's training steps of the masking statistics the pretrainer logs each step."""
    metrics = pd.read_csv(metrics_csv)
    out: dict[str, float | None] = {}
    for column, key in (
        ("mask/realised_ratio", "realised_ratio"),
        ("mask/expected_ratio", "expected_ratio"),
        ("mask/empty_roi_share", "empty_roi_share"),
    ):
        values = metrics[column].dropna() if column in metrics else pd.Series(dtype=float)
        out[key] = float(values.mean()) if len(values) else None
    out["steps"] = int(metrics["mask/realised_ratio"].notna().sum()) if "mask/realised_ratio" in metrics else 0
    return out
