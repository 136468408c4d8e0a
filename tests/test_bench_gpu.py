"""bench/gpu.py: the GPU run is known to work before GPU time is spent on it.

The dry run executes every part's code path at tiny sizes on the CPU (through bench/gpu.sh, as the GPU run does);
the runner's promises (a failing or hanging part loses nothing else, a global budget skips what no longer fits,
targets judged the right way round, pytest's result line read) are checked on small hand-made parts.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from bench._corpus import write_loader_corpus
from bench._gpu_parts import Figure, Part, Target, default_parts
from bench._gpu_run import Outcome, pytest_outcome
from bench._models import write_random_sam
from bench.gpu import run_all, select
from data.roi_cache import DONE, RoiCache

REPO = Path(__file__).resolve().parents[1]
ORDER = [
    "loc_vitb_release",
    "pretrain_resnet50",
    "maskedclip_vitb16",
    "gpu_tests",
    "loc_vitb_fast",
    "loc_vith_release",
    "spark_reference",
    "m2ib_reference",
]
ISSUE_TARGETS = {  # issue 18's targets, written out here independently of bench/_gpu_parts.py
    "loc_vitb_release": {"batched_images_per_s": ">= 50", "speedup_vs_naive": ">= 5"},
    "pretrain_resnet50": {"step_ratio_vs_dense": "<= 1.3"},
    "maskedclip_vitb16": {"step_ratio_vs_mim": "<= 1.5"},
    "spark_reference": {"speedup_fast_cl": ">= 1.3"},  # issue 29: >= 1.3x SparK's own step
    "m2ib_reference": {"speedup_batched": ">= 5"},  # issue 29: >= 5x the authors' M2IB code
}


@pytest.mark.slow
def test_dry_run_runs_every_part_and_writes_the_summary(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PY": sys.executable, "GPU_WHEELS": str(tmp_path / "no_wheels")}
    t0 = time.monotonic()
    done = subprocess.run(
        ["bash", "bench/gpu.sh", "--dry-run", "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True
    )
    wall_s = time.monotonic() - t0
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] is True and summary["targets_apply"] is False
    assert list(summary["parts"]) == ORDER and summary["failed"] == [] and summary["all_ok"] is True
    assert summary["missing_packages"] == [] and summary["packages"]["torch"]
    assert summary["wall_s"] <= wall_s

    # What the device tool brings back: at most 8 flat files named in letters, digits, '.', '_' and '-'.
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(re.fullmatch(r"[A-Za-z0-9._-]+", name) for name in files)
    assert all((out / name).is_file() for name in files)

    for name, part in summary["parts"].items():
        if part["status"] == "skipped":  # only the GPU tests may skip, and only without a GPU, saying why
            assert name == "gpu_tests" and not torch.cuda.is_available() and "GPU" in part["reason"]
            continue
        assert part["status"] == "ok" and part["file"] == "parts.json", (name, part)
        data = json.loads((out / part["file"]).read_text())[name]
        if "skipped" in data:  # a reference-code comparison without the reference's folder: no figures, said why
            assert name in ("spark_reference", "m2ib_reference") and "fetch" in data["skipped"], (name, data)
            assert all(figure["value"] is None and figure["meets"] is None for figure in part["figures"].values())
            continue
        for key, figure in part["figures"].items():
            assert figure["value"] == data[key] and isinstance(figure["value"], int | float), (name, key)
        for key, target in ISSUE_TARGETS.get(name, {}).items():
            assert part["figures"][key]["target"] == target
            assert part["figures"][key]["meets"] is Target(target[:2], float(target[3:])).met(data[key])

    parts = json.loads((out / "parts.json").read_text())
    loc = parts["loc_vitb_release"]
    assert loc["preset"] == "release" and loc["batched_precision"] == "fp32" and loc["bf16_skipped"] is None
    assert_localize_paths_agree(loc)
    fast = parts["loc_vitb_fast"]
    assert fast["preset"] == "fast" and fast["batched_saliency"]["noise_samples"] == 1
    assert fast["naive_saliency"]["preset"] == "release"  # the baseline stays the authors' loop
    assert fast["bf16_skipped"] is None and 0 <= fast["bf16_roi_pixel_disagreement"] < 1
    assert fast["bf16_roi_pixels_differing"] >= 0 and fast["bf16_images_with_any_difference"] <= 3
    assert fast["bf16_saliency_mae"] > 0  # autocast really ran: the maps are not bit-identical
    pretrain = parts["pretrain_resnet50"]
    assert pretrain["config"]["backbone"] == "resnet18" and pretrain["config"]["decoder"] == "spark"
    shares = pretrain["breakdown_share"]
    assert {"encoder", "densify", "decoder.proj"} <= set(shares)
    assert sum(k.startswith("decoder.blocks") for k in shares) == 5 and abs(sum(shares.values()) - 1) < 0.01
    assert pretrain["step_ratio_vs_dense"] > 0 and 0 <= pretrain["mask_share"] < 1
    assert pretrain["config"]["optimizer"] == "lamb" and pretrain["config"]["loader"]["items"] == 3 * 3 * 2
    assert pretrain["loader_images_per_s"] > 0 and pretrain["fed_step_images_per_s"] > 0
    tests = parts["gpu_tests"]
    assert tests["result_line"] and tests["passed"] + tests["skipped"] >= 2  # the Lightning and the saliency test


def assert_localize_paths_agree(result: dict) -> None:
    """bench/localize.py's baselines compute the batched path's masks: the same work, timed."""
    assert result["naive_whole_tower_per_step"] is True  # the authors' M2IB loop, not ours unbatched
    assert result["naive_saliency"]["noise_samples"] == 10 and result["batched_saliency"]["noise_samples"] == 10
    assert result["mask_agreement"] == 1.0 and result["rects_identical"] is True
    assert result["unbatched_mask_agreement"] == 1.0
    assert result["saliency_mae"] < 1e-5
    assert result["nonempty_roi_share"] > 0  # the agreement is not the trivial one of empty masks
    assert result["modalities"] == {"MR": 1, "CT": 1, "XR": 1}
    for key in ("batched_images_per_s", "naive_images_per_s", "unbatched_images_per_s"):
        assert result[key] > 0
    parts = result["speedup_from_batching"] * result["speedup_from_m2ib_loop"]
    assert abs(result["speedup_vs_naive"] - parts) < 1e-6


def test_the_real_run_has_the_issues_settings_and_fits_its_budget():
    parts = {p.name: p for p in default_parts(REPO)}
    assert list(parts) == ORDER
    real = {name: " ".join(p.argv(dry_run=False)) for name, p in parts.items()}
    assert "--size real --sam vit_b" in real["loc_vitb_release"] and "--preset release" in real["loc_vitb_release"]
    assert "--preset fast" in real["loc_vitb_fast"] and "--sam vit_h" in real["loc_vith_release"]
    assert "--backbone resnet50 --size 224 --batch 64" in real["pretrain_resnet50"]
    assert "--size vit-b16" in real["maskedclip_vitb16"]
    assert {"tests/test_pretrain_lightning.py", "tests/test_saliency.py"} <= set(parts["gpu_tests"].files)
    assert sum(p.estimate_s for p in parts.values()) <= 0.75 * 480  # room left under the 8-minute budget
    for name, targets in ISSUE_TARGETS.items():
        assert {f.key: str(f.target) for f in parts[name].figures if f.target}.items() >= targets.items()


def test_targets_are_judged_the_right_way_round():
    assert Target(">=", 50).met(50.0) is True and Target(">=", 50).met(49.9) is False
    assert Target("<=", 1.3).met(1.3) is True and Target("<=", 1.3).met(1.31) is False
    assert Target("<=", 1.5).met(None) is None
    with pytest.raises(ValueError, match="target op"):
        Target(">", 1)


def fake(name: str, code: str, budget_s: float = 60, figures: tuple[Figure, ...] = ()) -> Part:
    return Part(name, name, ("-c", code), (), (), budget_s, 1, figures, dry_budget_s=budget_s)


def test_a_failing_part_loses_nothing_else(tmp_path):
    parts = [
        fake("boom", "import sys; print('warming up', file=sys.stderr); sys.exit('CUDA out of memory')"),
        fake("fine", "import json; print(json.dumps({'ratio': 1.2}))", figures=(Figure("ratio", Target("<=", 1.3)),)),
    ]
    summary = run_all(parts, tmp_path, dry_run=True, budget_s=120, min_part_s=1)
    boom, fine = summary["parts"]["boom"], summary["parts"]["fine"]
    assert boom["status"] == "failed" and boom["reason"] == "CUDA out of memory" and "warming up" in boom["error"]
    assert boom["file"] is None and "boom" not in json.loads((tmp_path / "parts.json").read_text())
    assert fine["status"] == "ok" and fine["figures"]["ratio"] == {"value": 1.2, "target": "<= 1.3", "meets": True}
    assert json.loads((tmp_path / "parts.json").read_text())["fine"] == {"ratio": 1.2}
    assert summary["failed"] == ["boom"] and summary["retry"] == "bash bench/gpu.sh --only boom"
    assert summary["targets_met"] is True and "=== boom: failed" in (tmp_path / "gpu.log").read_text()


def test_a_hanging_part_is_ended_with_its_children(tmp_path):
    pid_file = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
        f"open({str(pid_file)!r}, 'w').write(str(child.pid)); time.sleep(120)"
    )
    t0 = time.monotonic()
    summary = run_all([fake("hang", code, budget_s=3)], tmp_path, dry_run=True, budget_s=120, min_part_s=1)
    assert time.monotonic() - t0 < 60
    part = summary["parts"]["hang"]
    assert part["status"] == "timeout" and part["timeout_s"] == 3 and summary["failed"] == ["hang"]
    child = int(pid_file.read_text())
    assert process_ends(child), f"the part's child process {child} outlived its timeout"


def process_ends(pid: int, wait_s: float = 5) -> bool:
    """Whether `pid` is gone or a zombie (killed, not yet reaped by whoever adopted it) within `wait_s`."""
    for _ in range(int(wait_s * 10)):
        try:
            if "zombie" in Path(f"/proc/{pid}/status").read_text():
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


def test_the_global_budget_skips_what_no_longer_fits(tmp_path):
    parts = [fake("first", "import time; time.sleep(1.5); print('{}')"), fake("second", "print('{}')")]
    summary = run_all(parts, tmp_path, dry_run=True, budget_s=3, min_part_s=2)
    assert summary["parts"]["first"]["status"] == "ok"
    second = summary["parts"]["second"]
    assert second["status"] == "skipped" and second["reason"].startswith("global budget")
    assert summary["skipped"] == ["second"] and summary["all_ok"] is True
    assert "second" not in json.loads((tmp_path / "parts.json").read_text())


def test_pytest_result_lines_are_read():
    failed = pytest_outcome(Outcome("failed", stdout="..F\n2 passed, 1 failed, 1 error in 3.10s\n", returncode=1))
    assert failed.status == "failed" and failed.reason == "2 passed, 1 failed, 1 error in 3.10s"
    assert (failed.data["passed"], failed.data["failed"], failed.data["errors"]) == (2, 1, 1)
    text = "s\nSKIPPED [1] tests/test_x.py:12: needs a GPU\n=== 1 skipped, 13 deselected in 1.0s ===\n"
    skipped = pytest_outcome(Outcome("failed", stdout=text, returncode=0))
    assert skipped.status == "skipped" and skipped.data["skipped"] == 1 and skipped.reason.endswith("needs a GPU")
    half = pytest_outcome(Outcome("failed", stdout="1 failed, 1 skipped in 2.0s\n", returncode=1))
    assert half.status == "failed" and half.data["failed"] == 1  # a skip beside a failure hides nothing
    passed = pytest_outcome(Outcome("failed", stdout="2 passed in 9.2s\n", returncode=0))
    assert passed.status == "ok" and passed.data["passed"] == 2
    broken = pytest_outcome(Outcome("failed", stdout="", stderr="ImportError: no zarr\n", returncode=4))
    assert broken.status == "failed" and broken.data is None and broken.reason == "ImportError: no zarr"


def test_no_gpu_test_file_skips_rather_than_collecting_the_suite(tmp_path):
    part = Part("gpu_tests", "tests", ("-m", "pytest", "-m", "gpu"), (), (), 60, 1, kind="pytest", files=())
    summary = run_all([part], tmp_path, dry_run=True, budget_s=60, min_part_s=1)
    assert (
        summary["parts"]["gpu_tests"]["status"] == "skipped" and "marked gpu" in summary["parts"]["gpu_tests"]["reason"]
    )


def test_part_selection():
    parts = default_parts(REPO)
    assert [p.name for p in select(parts, "gpu_tests,loc_vitb_fast", None)] == ["gpu_tests", "loc_vitb_fast"]
    assert [p.name for p in select(parts, None, "gpu_tests")] == [n for n in ORDER if n != "gpu_tests"]
    with pytest.raises(SystemExit, match="unknown part"):
        select(parts, "loc_vitb_relase", None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_the_real_run_refuses_a_machine_without_gpu(tmp_path):
    done = subprocess.run(
        [sys.executable, "bench/gpu.py", "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode != 0 and "no CUDA device" in done.stderr and not any(tmp_path.iterdir())


def test_loader_corpus_copies_the_files_with_their_truth_masks(tmp_path):
    corpus, cache_path = write_loader_corpus(tmp_path, per_modality=3, size=48, copies=2)
    cache = RoiCache.open(cache_path)
    manifest = cache.manifest()
    assert len(manifest) == 3 * 3 * 2 and (cache.status() == DONE).all()
    labels = pd.read_csv(corpus / "labels.csv")
    index_of = {(r.path, r.frame): i for i, r in enumerate(manifest.itertuples())}
    nonempty = 0
    for row in labels.itertuples():
        original, copy = index_of[(row.path, row.frame)], index_of[(f"copy_001/{row.path}", row.frame)]
        roi = cache.read_mask(original)
        assert np.array_equal(cache.read_mask(copy), roi)  # a copy carries its original's ROI
        truth_png = corpus / "truth" / f"{row.item_id}.png"
        truth = cv2.imread(str(truth_png), cv2.IMREAD_GRAYSCALE) > 0 if truth_png.exists() else np.zeros_like(roi)
        union = np.logical_or(roi, truth).sum()
        assert union == 0 or np.logical_and(roi, truth).sum() / union > 0.9, row.item_id  # resized to 256 and back
        nonempty += bool(truth.any())
    assert 0 < nonempty < len(labels)  # some items with a ROI, some without


def test_real_size_sam_names_a_registry_architecture(tmp_path):
    with pytest.raises(ValueError, match="vit_b, vit_l or vit_h"):
        write_random_sam(tmp_path / "sam.pth", "vit_hh")
    assert not (tmp_path / "sam.pth").exists()
