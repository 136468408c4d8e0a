"""Where a study keeps everything under its `out` folder: defined here once, used by the runner and the report.

    rois/<source>/cache.zarr                ROI cache of one source (imported masks, shuffled control, localize, ...)
    rois/<source>/{done.json, log.txt}      that step's done marker and log
    runs/<arm>/calibration/done.json        a matched random arm's ratio (study.matched), set before training
    runs/<arm>/s<seed>/pretrain/            Lightning run folder (logs/version_N/...), backbone.pt, done.json
    runs/<arm>/s<seed>/<downstream>/        results/<one results JSON>, lightning/, done.json, log.txt
    runs.csv  results.csv  results.md  <downstream>_<metric>_vs_mask_ratio.png   the report

A step is finished exactly when its folder holds `done.json` (written last, atomically): the runner skips it,
the report reads it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data.portable import absolute_path, portable

DONE_FILE = "done.json"
LOG_FILE = "log.txt"


@dataclass(frozen=True)
class StudyLayout:
    """The paths of one study's steps and outputs under `out`."""

    out: Path

    def roi_dir(self, source: str) -> Path:
        return self.out / "rois" / source

    def roi_cache(self, source: str) -> Path:
        return self.roi_dir(source) / "cache.zarr"

    def calibration_dir(self, arm: str) -> Path:
        return self.out / "runs" / arm / "calibration"

    def seed_dir(self, arm: str, seed: int) -> Path:
        return self.out / "runs" / arm / f"s{seed}"

    def pretrain_dir(self, arm: str, seed: int) -> Path:
        return self.seed_dir(arm, seed) / "pretrain"

    def backbone(self, arm: str, seed: int) -> Path:
        return self.pretrain_dir(arm, seed) / "backbone.pt"

    def downstream_dir(self, arm: str, seed: int, downstream: str) -> Path:
        return self.seed_dir(arm, seed) / downstream

    def results_dir(self, arm: str, seed: int, downstream: str) -> Path:
        return self.downstream_dir(arm, seed, downstream) / "results"

    def report_file(self, name: str) -> Path:
        """A report output: 'runs.csv', 'results.csv', 'results.md', a plot."""
        return self.out / name

    def label(self, run_dir: Path) -> str:
        """A step's name in messages: its folder relative to `out`."""
        return str(run_dir.relative_to(self.out))


def read_done(run_dir: Path) -> dict[str, Any] | None:
    """The done record of the step in `run_dir`, or None while it has not finished."""
    path = run_dir / DONE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def as_recorded(value: Any, run_dir: Path) -> Any:
    """`value` as `write_done` records it in `run_dir` (absolute paths relative to `run_dir`): compare with this."""
    return portable(value, base=run_dir.resolve())


def done_path(run_dir: Path, recorded: str) -> Path:
    """A path from `run_dir`'s done record (relative to `run_dir`, or absolute in records of older versions)."""
    return absolute_path(recorded, base=run_dir)


def write_done(run_dir: Path, record: dict[str, Any]) -> None:
    """Mark the step in `run_dir` finished: write its record to a temporary name, then rename it into place.
    Paths in the record are written relative to `run_dir` (no absolute path in an output; `done_path` reads one)."""
    done = run_dir / DONE_FILE
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(as_recorded(record, run_dir), indent=2, default=str) + "\n")
    tmp.replace(done)
