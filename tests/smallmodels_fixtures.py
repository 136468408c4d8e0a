"""The small models of `python -m smallmodels train`, trained once per test session and shared by the xdist
workers (a file lock; the first worker trains, the others wait and reuse)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def small_models(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """Path of the trained small models' localize.yaml (the command's defaults, seed 0). MWM_SMALL_MODELS=DIR
    reuses models trained before (`python -m smallmodels train --out DIR`), e.g. while checking planted bugs in
    `localize`, which the training does not run."""
    if os.environ.get("MWM_SMALL_MODELS"):
        return Path(os.environ["MWM_SMALL_MODELS"]) / "localize.yaml"
    base = tmp_path_factory.getbasetemp()
    shared = base if worker_id == "master" else base.parent  # xdist: one folder above every worker's
    out = shared / "small_models"
    with FileLock(str(out) + ".lock"):
        if not (out / "localize.yaml").is_file():
            proc = subprocess.run(
                [sys.executable, "-m", "smallmodels", "train", "--out", str(out)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=900,
            )
            assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "localize.yaml"
