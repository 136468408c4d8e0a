"""`make demo`, the newcomer's end-to-end path, on CPU with no network and no model weights: it localizes with the
small models trained on synthetic data (shared with the semantic test, `SMALL=`), and says so."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pydicom
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
    assert_outputs_hold_no_identifier_or_absolute_path(work, roots=(work, tmp_path, ROOT, small_models.parent))


# Inputs, not outputs: the sample corpora the demo writes (DICOM files carry the PHI-like tags on purpose).
INPUT_FOLDERS = ("corpus", "train_corpus")
IDENTIFYING_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "SeriesInstanceUID")


def identifier_values(work: Path) -> set[str]:
    """Every identifying tag value of the DICOM files the demo read (at least 6 characters: no false hits)."""
    values = set()
    for path in work.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        values.update(str(ds.get(tag, "")) for tag in IDENTIFYING_TAGS)
    return {v for v in values if len(v) >= 6}


def assert_outputs_hold_no_identifier_or_absolute_path(work: Path, roots: tuple[Path, ...]) -> None:
    """Issue 23: grep every file the run wrote (checkpoints, configs, caches' metadata, results, sidecars, the
    inspect page) for the corpus's identifier values and for the absolute folders the run was given."""
    identifiers = identifier_values(work)
    assert len(identifiers) > 10  # the sample's patients, studies and series: the check has something to find
    # An absolute folder, not the same folder inside a relative path ("../../tmp/x" holds "/tmp/x" after "..").
    patterns = [re.escape(v.encode()) for v in identifiers]
    patterns += [rb"(?<!\.)" + re.escape(str(r.resolve()).encode()) for r in roots]
    outputs = [p for p in work.rglob("*") if p.is_file() and not set(p.relative_to(work).parts) & set(INPUT_FOLDERS)]
    assert any(p.suffix == ".ckpt" for p in outputs) and any(p.name == "config.yaml" for p in outputs)
    found = {str(p.relative_to(work)): [m.decode() for m in patterns if re.search(m, p.read_bytes())] for p in outputs}
    assert not {k: v for k, v in found.items() if v}, "identifier or absolute path in outputs"
