"""Every real-size figure in one GPU run: localization, pretraining step, MaskedCLIP step, the GPU-marked tests.

    bash bench/gpu.sh [--out DIR] [--budget-s 480] [--only NAME,...] [--skip NAME,...]   # on a machine with a GPU
    python bench/gpu.py --dry-run [--out DIR]   # the same parts at tiny sizes on the CPU (tests/test_bench_gpu.py)
    python bench/gpu.py --list                  # the parts, their planned GPU time and budgets

Each part (`bench/_gpu_parts.py`) runs as its own process in its own process group with its own timeout, so a part
that fails, hangs or runs out of memory loses nothing else; a global budget (`--budget-s`) skips, with the reason,
the parts that would start with less than `--min-part-s` left. The output folder (default `$OUT` when set, else
work/gpu_run) receives one `<part>.json` per part that ran (its benchmark's JSON object, or for the GPU tests their
counts and result line), `gpu.log` (each part's command and the tail of its stderr) and `summary.json`, rewritten
after every part: machine (GPU model, driver, torch/CUDA versions, packages), date, and per part its status (ok,
failed, timeout, skipped), reason or error, wall time, budget, and its headline figures beside the issue's targets
with pass/fail. Targets apply to an H100/H200 run only (`targets_apply`); a dry run or another GPU still reports the
comparison. At most 8 files, flat: what the device tool brings back. Exit code 1 when a part failed or timed out.
"""

# ruff: noqa: E402  (the sys.path fix below must run before the project imports)
from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder is sys.path[0]; the project root must come first for its packages.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import os
import time
from datetime import UTC, datetime

from bench._gpu_env import environment, targets_apply
from bench._gpu_parts import Part, default_parts
from bench._gpu_run import Outcome, run_part

REPO = Path(__file__).resolve().parents[1]
SUMMARY, LOG, PARTS = "summary.json", "gpu.log", "parts.json"  # few files: the device tool brings back 8


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "work" / "gpu_run"))
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: checks that every part runs")
    parser.add_argument("--budget-s", type=float, help="global wall-time budget (default 480; dry run 900)")
    parser.add_argument("--min-part-s", type=float, help="start no part with less left (default 30; dry run 5)")
    parser.add_argument("--only", help="comma-separated part names to run (e.g. a retry of the failed ones)")
    parser.add_argument("--skip", help="comma-separated part names not to run")
    parser.add_argument("--list", action="store_true", help="print the parts with planned time and budget; exit")
    args = parser.parse_args(argv)
    args.budget_s = args.budget_s or (900.0 if args.dry_run else 480.0)
    args.min_part_s = args.min_part_s if args.min_part_s is not None else (5.0 if args.dry_run else 30.0)
    return args


def select(parts: list[Part], only: str | None, skip: str | None) -> list[Part]:
    """`parts` restricted to `only` and without `skip`; unknown names are refused."""
    names = [p.name for p in parts]
    wanted = [n for n in (only or "").split(",") if n]
    unwanted = [n for n in (skip or "").split(",") if n]
    unknown = sorted(set(wanted + unwanted) - set(names))
    if unknown:
        raise SystemExit(f"unknown part(s) {unknown}; the parts are {names}")
    return [p for p in parts if (not wanted or p.name in wanted) and p.name not in unwanted]


def run_all(
    parts: list[Part], out: Path, dry_run: bool, budget_s: float, min_part_s: float, python: str = sys.executable
) -> dict:
    """Run `parts` in order within `budget_s`, writing `<part>.json`, the log and the summary after each part."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env["PYTHONUNBUFFERED"] = "1"
    t_start = time.monotonic()
    deadline = t_start + budget_s
    info = environment()
    summary = {
        "run": "dry run: tiny sizes, CPU" if dry_run else "GPU run: real sizes",
        "dry_run": dry_run,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        **info,
        "targets_apply": targets_apply(info, dry_run),
        "budget_s": budget_s,
        "planned_s": {p.name: {"estimate_s": p.estimate_s, "budget_s": p.budget_s} for p in parts},
        "parts": {},
    }
    (out / LOG).write_text(f"{summary['run']} {summary['date']} on {info['device']}\n")
    data: dict[str, dict] = {}  # each part's JSON, all in one file (PARTS), keyed by part
    for i, part in enumerate(parts, 1):
        left = deadline - time.monotonic()
        limit = min(part.dry_budget_s if dry_run else part.budget_s, left)
        if left < min_part_s:
            outcome = Outcome.skipped(f"global budget: {left:.0f} s left of {budget_s:.0f} s, under {min_part_s:.0f} s")
        else:
            outcome = run_part(part, python, dry_run, limit, env, REPO)
        summary["parts"][part.name] = outcome.record(part, dry_run, max(limit, 0.0))
        if outcome.data is not None:
            data[part.name] = outcome.data
            write_json(out / PARTS, data)
        with (out / LOG).open("a") as log:
            log.write(outcome.log_text(part, python, dry_run))
        summary["wall_s"] = round(time.monotonic() - t_start, 1)
        summary.update(verdict(summary["parts"]))
        write_json(out / SUMMARY, summary)
        print(f"[gpu] {i}/{len(parts)} {part.name}: {outcome.headline(part)}", flush=True)
    return summary


def verdict(records: dict[str, dict]) -> dict:
    """Overall status: which parts failed or were skipped, whether all targets met, the retry command."""
    failed = [name for name, r in records.items() if r["status"] in ("failed", "timeout")]
    ok = [r for r in records.values() if r["status"] == "ok"]  # a skipped part's counts judge nothing
    judged = [f["meets"] for r in ok for f in r["figures"].values() if f["target"]]
    return {
        "all_ok": not failed,
        "failed": failed,
        "skipped": [name for name, r in records.items() if r["status"] == "skipped"],
        "targets_met": None if not judged or None in judged else all(judged),
        "retry": f"bash bench/gpu.sh --only {','.join(failed)}" if failed else None,
    }


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)  # a reader (or a kill) never sees half a file


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    parts = select(default_parts(REPO), args.only, args.skip)
    if args.list:
        for p in parts:
            print(f"{p.name:20s} estimate {p.estimate_s:4.0f} s  budget {p.budget_s:4.0f} s  {p.what}")
        print(f"{'total':20s} estimate {sum(p.estimate_s for p in parts):4.0f} s  global budget {args.budget_s:.0f} s")
        return 0
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: this run is for a GPU; --dry-run runs the same parts at tiny sizes")
    summary = run_all(parts, Path(args.out), args.dry_run, args.budget_s, args.min_part_s)
    print(f"[gpu] {summary['wall_s']} s; summary: {Path(args.out) / SUMMARY}", flush=True)
    return 0 if summary["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
