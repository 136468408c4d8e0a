"""Mutation testing of the method-critical modules with mutmut 3 (`make mutate`, `make mutate MODULE=path.py`).

Each module gets its own workspace, work/mutation/<module>/: links to the repository's top-level entries, a
pyproject.toml holding only the mutmut and pytest settings for that module (mutate this file; run these test
files), and mutmut's `mutants/` copy. mutmut records which of those tests reach each mutated function and runs
only them for each mutant. The editable install points at the original tree, so every pytest run (and every
`python -m` subprocess a test starts) gets PYTHONPATH=<workspace>/mutants, and the driver checks that the module
then imports from the copy before trusting a "survived".

    python tools/mutate.py run [MODULE ...] [--jobs N] [--resume]   # default: every module of MODULES, in order
    python tools/mutate.py recheck MODULE [NAME ...] [--jobs N]      # rerun only its survivors, with the new tests
    python tools/mutate.py report                                    # work/mutation/report.{md,json}

Not part of `make test`: a module takes minutes, the whole list an hour or more on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("MUTATE_WORK", ROOT / "work" / "mutation"))
PACKAGES = ("data", "localize", "pretrain", "finetune", "smallmodels", "study")
SKIP = {".git", ".venv", "work", "mutants", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis", "tools"}

# module -> the test files that exercise it (unit-level ones: each mutant is run against the tests of these files
# that reach its function). The order is the order `make mutate` runs them in.
MODULES: dict[str, tuple[str, ...]] = {
    "data/readers/dicom.py": (
        "tests/test_readers_dicom.py",
        "tests/test_readers.py",
        "tests/test_mutation_kills_dicom.py",
    ),
    "data/readers/nifti.py": (
        "tests/test_readers.py",
        "tests/test_nifti_flipped.py",
        "tests/test_mutation_kills_nifti.py",
    ),
    "data/readers/raster.py": ("tests/test_readers.py", "tests/test_mutation_kills_raster.py"),
    "pretrain/masking.py": ("tests/test_masking.py", "tests/test_mutation_kills_masking.py"),
    "data/dataset.py": (
        "tests/test_dataset.py",
        "tests/test_dataset_pairing.py",
        "tests/test_mutation_kills_dataset.py",
        "tests/test_packed_square.py",
    ),
    # test_spark.py without its slowest tests (the 16-step training run, the bf16 fast paths that are ignored on a
    # CPU without native bf16; the kill tests cover their mutants): a model is built per test, on every mutant
    "pretrain/spark.py": (
        *(
            f"tests/test_spark.py::{name}"
            for name in (
                "test_loss_matches_a_patch_by_patch_reference",
                "test_loss_ignores_visible_patches",
                "test_per_patch_normalisation_by_hand_on_a_two_patch_rgb_image",
                "test_target_is_normalised_per_masked_patch",
                "test_spark_decoder_widths_and_shapes_for_resnet50_at_224",
                "test_convnext_small_coarsest_level_needs_no_projection",
                "test_pixel_shuffle_decoder_option",
                "test_reconstruction_pastes_visible_patches_and_denormalises",
                "test_forward_outputs_and_gradients",
                "test_convnext_uses_layer_norm_densify",
                "test_sync_bn_flag_reaches_every_batch_norm",
                "test_bf16_autocast_forward_backward",
                "test_fast_path_computes_the_plain_function_under_a_differentiated_mask[channels_last]",
            )
        ),
        "tests/test_mutation_kills_spark.py",
    ),
    # test_saliency.py runs M2IB on the BiomedCLIP stand-in (10-20 s a test, minutes a mutant): its M2IB checks are
    # repeated on test_m2ib_method.py's toy CLIP in test_mutation_kills_m2ib.py
    "localize/saliency/m2ib.py": ("tests/test_m2ib_method.py", "tests/test_mutation_kills_m2ib.py"),
    "localize/refine.py": ("tests/test_refine.py", "tests/test_empty_roi_flag.py"),
    "data/intensity.py": (
        "tests/test_intensity.py",
        "tests/test_ct_windows.py",
        "tests/test_intensity_follow.py",
        "tests/test_localize_memory.py",
        "tests/test_mutation_kills_intensity.py",
    ),
    "data/roi_cache.py": (
        "tests/test_roi_cache.py",
        "tests/test_roi_rects.py",
        "tests/test_dataset_pairing.py",
        "tests/test_mutation_kills_roi_cache.py",
    ),
    # the data tests of the pretraining files, not their training runs (a Trainer.fit per mutant)
    "pretrain/datamodule.py": (
        "tests/test_dataset_pairing.py",
        "tests/test_pretrain_roi_shape.py",
        "tests/test_mutation_kills_datamodule.py",
        "tests/test_pretrain_lightning.py::test_datamodule_keeps_done_items_and_splits_validation_stably",
        "tests/test_pretrain_lightning.py::test_intensity_settings_reach_the_images",
        "tests/test_pretrain_lightning.py::test_joint_augmentation_moves_the_roi_with_the_image_and_is_seeded_by_epoch_and_item",
        "tests/test_pretrain_lightning.py::test_epoch_sampler_shards_ranks_and_reshuffles_per_epoch",
        "tests/test_pretrain_lightning.py::test_resumable_loader_warns_when_the_device_count_changed",
        "tests/test_pretrain_recipe.py::test_global_batch_is_divided_over_devices_and_accumulation",
        "tests/test_packed_square.py::test_square_batches_equal_the_raw_batches",
        "tests/test_packed_square.py::test_integer_batches_become_exactly_the_float_batches",
        "tests/test_packed_square.py::test_pretraining_refuses_a_square_store_it_would_resize_otherwise",
        "tests/test_patient_splits.py::test_pretraining_validation_holds_out_whole_patients",
        "tests/test_slice_neighbours.py::test_the_datamodule_feeds_2_5d_batches_and_keeps_the_option",
        "tests/test_packed_datasets.py::test_pretraining_follows_the_cache_intensity_and_reads_the_store",
        "tests/test_packed_datasets.py::test_an_override_is_warned_and_a_store_of_other_rules_refused",
        "tests/test_packed_datasets.py::test_a_cache_without_intensity_rules_takes_the_stores",
    ),
    "pretrain/maskedclip/losses.py": ("tests/test_maskedclip_losses.py", "tests/test_maskedclip_fixes.py"),
    # the teacher's targets (distillation_target, the stop-gradient tokens) are tested with the loss terms
    "pretrain/maskedclip/teacher.py": ("tests/test_maskedclip_model.py", "tests/test_maskedclip_losses.py"),
    "study/comparison.py": ("tests/test_study_comparison.py", "tests/test_mutation_kills_comparison.py"),
}

PYTEST_ARGS = ["-p", "no:xdist", "-p", "no:cacheprovider", "-q", "-m", "not gpu"]


def slug(module: str) -> str:
    return module.removesuffix(".py").replace("/", ".")


def workspace_config(module: str, tests: tuple[str, ...]) -> str:
    """The workspace's pyproject.toml: mutmut's settings for this module and the repository's pytest settings."""
    import tomllib

    pytest_ini = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    own = SKIP | set(PACKAGES) | {"pyproject.toml"}
    also_copy = sorted(p.name for p in ROOT.iterdir() if p.name not in own)

    def toml_list(values) -> str:
        return "[" + ", ".join(json.dumps(str(v)) for v in values) + "]"

    lines = [
        "[tool.mutmut]",
        f"source_paths = {toml_list(PACKAGES)}",
        f"only_mutate = {toml_list([module])}",
        f"also_copy = {toml_list(also_copy)}",
        f"pytest_add_cli_args = {toml_list(PYTEST_ARGS)}",
        f"pytest_add_cli_args_test_selection = {toml_list(tests)}",
        "use_git_change_detection = false",
        # a mutant's time limit: 15 x its tests' clean time + 30 s; the 1 s default timed out every masking mutant
        # on a loaded 2-core machine (the forked test run alone takes longer)
        "timeout_constant = 30.0",
        # torch is not fork-safe once its thread pools run: workers come from a fork server that never ran a test
        'process_isolation = "forkserver"',
        f"debug = {'true' if os.environ.get('MUTATE_DEBUG') else 'false'}",
        "",
        "[tool.pytest.ini_options]",
        f"markers = {toml_list(pytest_ini.get('markers', []))}",
        f"filterwarnings = {toml_list(pytest_ini.get('filterwarnings', []))}",
        "",
    ]
    return "\n".join(lines)


def prepare(module: str, resume: bool) -> Path:
    """The module's workspace: links to the tree, its own pyproject.toml; a fresh mutants/ unless `resume`."""
    ws = WORK / slug(module)
    if not resume and ws.exists():
        shutil.rmtree(ws)
    ws.mkdir(parents=True, exist_ok=True)
    for entry in ROOT.iterdir():
        if entry.name in SKIP or entry.name == "pyproject.toml":
            continue
        link = ws / entry.name
        if not link.is_symlink():
            link.symlink_to(entry)
    (ws / "pyproject.toml").write_text(workspace_config(module, MODULES[module]))
    # Copy the tree into mutants/ before mutmut starts (it skips what exists; copy2 keeps the mtimes it compares):
    # with PYTHONPATH naming mutants/ from the start, Python caches that folder's listing while it is still empty,
    # and the tests would then fail to import `tests`, or import the original `data` through the editable install.
    copy = ws / "mutants"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for entry in sorted(ws.iterdir()):
        if entry.name in SKIP or (copy / entry.name).exists():
            continue
        if entry.is_dir():
            shutil.copytree(entry, copy / entry.name, ignore=ignore)
        else:
            copy.mkdir(exist_ok=True)
            shutil.copy2(entry, copy / entry.name)
    return ws


def environment(ws: Path) -> dict[str, str]:
    """PYTHONPATH = the mutated copy first: subprocesses (`python -m ...`) of the tests import it too."""
    env = {**os.environ, "PYTHONPATH": str(ws / "mutants"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("PYTEST_ADDOPTS", None)
    return env


def check_imports_copy(module: str, ws: Path) -> None:
    """Refuse to report results unless a subprocess with the tests' environment imports the copy."""
    name = slug(module)
    out = subprocess.run(
        [sys.executable, "-c", f"import {name} as m; print(m.__file__)"],
        cwd=ws / "mutants",
        env=environment(ws),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(out).resolve().is_relative_to((ws / "mutants").resolve()):
        raise SystemExit(f"mutate: {name} imports from {out}, not from the mutated copy in {ws / 'mutants'}")
    print(f"mutate: a subprocess imports {name} from {out}", flush=True)


def run(module: str, jobs: int, resume: bool) -> int:
    if module not in MODULES:
        raise SystemExit(f"mutate: {module} is not in tools/mutate.py's MODULES (add it with its test files)")
    ws = prepare(module, resume)
    print(f"mutate: {module} with {' '.join(MODULES[module])} in {ws}", flush=True)
    start = datetime.now(UTC)
    cmd = ["nice", "-n", "10", sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs)]
    code = subprocess.call(cmd, cwd=ws, env=environment(ws))
    check_imports_copy(module, ws)
    (ws / "finished.json").write_text(
        json.dumps(
            {
                "module": module,
                "started": start.isoformat(timespec="seconds"),
                "exit_code": code,
                "seconds": round((datetime.now(UTC) - start).total_seconds()),
                "jobs": jobs,
            }
        )  # fmt: skip
    )
    return code


def recheck(module: str, jobs: int, only: list[str] | None = None) -> int:
    """Rerun only the module's survivors (and mutants no test reached) against the current test files: after new
    kill tests, this takes minutes where a full run takes tens. mutmut collects the new tests' coverage first."""
    ws = WORK / slug(module)
    meta = ws / "mutants" / (module + ".meta")
    if not meta.exists():
        raise SystemExit(f"mutate: {module} has no results in {ws}; run `make mutate MODULE={module}` first")
    from mutmut.stats import status_by_exit_code

    exit_codes = json.loads(meta.read_text())["exit_code_by_key"]
    names = sorted(k for k, c in exit_codes.items() if status_by_exit_code[c] in ("survived", "no tests"))
    if only:
        names = [n for n in names if n in only or n.rsplit(".", 1)[-1] in only]
    prepare(module, resume=True)  # the current test selection in the workspace's pyproject.toml
    shutil.rmtree(ws / "mutants" / "tests")  # the tests as they are now (mutmut copied them at the first run)
    shutil.copytree(ROOT / "tests", ws / "mutants" / "tests", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    print(f"mutate: rechecking {len(names)} mutants of {module}", flush=True)
    if not names:
        return 0
    cmd = ["nice", "-n", "10", sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs), *names]
    code = subprocess.call(cmd, cwd=ws, env=environment(ws))
    check_imports_copy(module, ws)
    return code


def module_results(module: str) -> dict | None:
    """Counts per status and each survivor's diff, from mutmut's .meta file (None when not run)."""
    ws = WORK / slug(module)
    meta = ws / "mutants" / (module + ".meta")
    if not meta.exists():
        return None
    from mutmut.stats import status_by_exit_code

    exit_codes = json.loads(meta.read_text())["exit_code_by_key"]
    counts: dict[str, int] = {}
    for code in exit_codes.values():
        status = status_by_exit_code[code]
        counts[status] = counts.get(status, 0) + 1
    done = ("killed", "timeout", "not checked")  # not checked: a run stopped early; counted, not listed
    left = sorted(k for k, c in exit_codes.items() if status_by_exit_code[c] not in done)
    diffs = {}
    if left:
        script = (
            "import json, sys\nfrom mutmut.mutation.diff_apply import get_diff_for_mutant\n"
            "names, path = json.loads(sys.argv[1]), sys.argv[2]\n"
            "print(json.dumps({n: get_diff_for_mutant(n, path=path) for n in names}))"
        )
        out = subprocess.run(
            [sys.executable, "-c", script, json.dumps(left), module], cwd=ws, capture_output=True, text=True
        )
        diffs = json.loads(out.stdout) if out.returncode == 0 else {n: f"(no diff: {out.stderr[-300:]})" for n in left}
    finished = ws / "finished.json"
    info = json.loads(finished.read_text()) if finished.exists() else {}
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    tested = sum(v for k, v in counts.items() if k not in ("not checked", "skipped"))
    return {
        "module": module,
        "tests": list(MODULES[module]),
        "counts": counts,
        "score": round(100 * killed / tested, 1) if tested else None,
        "left": {n: {"status": status_by_exit_code[exit_codes[n]], "diff": diffs.get(n, "")} for n in left},
        **{k: info[k] for k in ("started", "seconds", "jobs") if k in info},
    }


def documented_equivalents() -> dict[str, str]:
    """Mutant name -> reason, from docs/TESTING.md's lines "- `NAME`: reason" (several names may share a line)."""
    found = {}
    for line in (ROOT / "docs" / "TESTING.md").read_text().splitlines():
        names = re.findall(r"`([\w.]+__mutmut_\d+)`", line)
        for name in names:
            found[name] = line.rsplit("`", 1)[-1].lstrip(": ").strip()
    return found


def report() -> Path:
    results = [r for r in (module_results(m) for m in MODULES) if r is not None]
    equivalent = documented_equivalents()
    for r in results:
        for name, left in r["left"].items():
            left["equivalent"] = equivalent.get(name)
        r["unexplained"] = sum(left["equivalent"] is None for left in r["left"].values())
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "report.json").write_text(json.dumps(results, indent=1))
    lines = [
        "# Mutation testing report",
        "",
        "| module | killed | survived | timeout | other | score % | unexplained | s |",
    ]
    lines.append("|---|---|---|---|---|---|---|---|")
    for r in results:
        c = r["counts"]
        other = sum(v for k, v in c.items() if k not in ("killed", "survived", "timeout"))
        row = [r["module"], c.get("killed", 0), c.get("survived", 0), c.get("timeout", 0), other, r["score"]]
        row.append(r["unexplained"])
        lines.append("| " + " | ".join(str(v) for v in [*row, r.get("seconds", "")]) + " |")
    for r in results:
        if r["left"]:
            lines += ["", f"## {r['module']}: not killed", ""]
            for name, left in r["left"].items():
                why = f"documented: {left['equivalent']}" if left["equivalent"] else "UNEXPLAINED"
                lines += [f"### {name} ({left['status']}, {why})", "", "```diff", left["diff"], "```", ""]
    path = WORK / "report.md"
    path.write_text("\n".join(lines) + "\n")
    print(f"mutate: report in {path} and {WORK / 'report.json'}")
    for r in results:
        print(f"  {r['module']}: {r['counts']} score {r['score']}%, {r['unexplained']} unexplained")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="mutate modules (default: all of MODULES, in order), then write the report")
    run_p.add_argument("modules", nargs="*", help="e.g. data/readers/nifti.py")
    run_p.add_argument("--jobs", type=int, default=2, help="mutants tested at once (default 2)")
    run_p.add_argument("--resume", action="store_true", help="keep the workspace's earlier results")
    recheck_p = sub.add_parser("recheck", help="rerun a module's survivors only (after adding kill tests)")
    recheck_p.add_argument("module", help="e.g. data/readers/nifti.py")
    recheck_p.add_argument("names", nargs="*", help="only these survivors (mutmut's names, module prefix optional)")
    recheck_p.add_argument("--jobs", type=int, default=2, help="mutants tested at once (default 2)")
    sub.add_parser("report", help="write work/mutation/report.{md,json} from the workspaces")
    args = parser.parse_args(argv)
    if args.command == "report":
        report()
        return 0
    if args.command == "recheck":
        code = recheck(args.module.removeprefix("./"), args.jobs, args.names)
        report()
        return code
    codes = [run(m.removeprefix("./"), args.jobs, args.resume) for m in (args.modules or list(MODULES))]
    report()
    return max(codes, default=0)


if __name__ == "__main__":
    sys.exit(main())
