"""`make demo`, the newcomer's end-to-end path, on CPU with no network and no model weights: it localizes with the
small models trained on synthetic data (shared with the semantic test, `SMALL=`), and says so."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import zarr

from tests.smallmodels_fixtures import small_models  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_demo_runs_end_to_end(tmp_path, small_models):  # noqa: F811 - fixture
    work = tmp_path / "work"
    proc = subprocess.run(
        ["make", "--no-print-directory", "demo", f"WORK={work}", f"SMALL={small_models.parent}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # It says plainly what the models are, and the cache says so too.
    assert "SMALL MODELS TRAINED ON SYNTHETIC DATA" in proc.stdout
    provenance = zarr.open_group(work / "roi_cache.zarr", mode="r").attrs["provenance"]
    assert provenance["untrained"] is False and provenance["models_label"].startswith("small models trained")
    assert "eval: Dice" in proc.stderr
    # Every artefact it announces exists.
    for line in proc.stdout.split("demo artefacts:")[1].strip().splitlines():
        path = Path(line.split()[-1] if "(" not in line else line.split("(")[0].split()[-1])
        assert path.exists(), line
    assert json.loads((work / "localize_eval.json").read_text())["evaluated"] > 0
    (result,) = (work / "results" / "finetune").glob("*.json")
    record = json.loads(result.read_text())
    assert record["init"] == "pretrained" and 0.0 <= record["metrics"]["accuracy"] <= 1.0
