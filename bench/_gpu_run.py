"""One part of the GPU run as its own process group with a timeout, and what it left: status, JSON, figures."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench._gpu_parts import Part

TAIL_CHARS = 4000  # of stderr kept in the summary's error and in the log
GRACE_S = 5  # after SIGTERM at a timeout, before SIGKILL
PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)")


@dataclass
class Outcome:
    status: str  # ok | failed | timeout | skipped
    reason: str | None = None  # why skipped, or the error's last line
    wall_s: float = 0.0
    data: dict | None = None  # the part's JSON (written to parts.json under its name)
    stdout: str = ""
    stderr: str = ""
    returncode: int | None = None

    @classmethod
    def skipped(cls, reason: str) -> Outcome:
        return cls("skipped", reason)

    def figures(self, part: Part) -> dict[str, dict]:
        """Each headline figure with its target and whether it meets it (None: no value or no target)."""
        if self.data is None:
            return {}
        out = {}
        for fig in part.figures:
            value = self.data.get(fig.key)
            value = value if isinstance(value, int | float) and not isinstance(value, bool) else None
            target = fig.target
            out[fig.key] = {
                "value": value,
                "target": str(target) if target else None,
                "meets": target.met(value) if target else None,
            }
        return out

    def record(self, part: Part, dry_run: bool, limit_s: float) -> dict:
        """The part's entry in summary.json."""
        return {
            "what": part.what,
            "status": self.status,
            "reason": self.reason,
            "wall_s": round(self.wall_s, 1),
            "timeout_s": round(limit_s, 1),
            "estimate_s": part.estimate_s,
            "file": "parts.json" if self.data is not None else None,  # under the part's name
            "figures": self.figures(part),
            "sizes": part.dry_note if dry_run else "real",
            "error": self.stderr[-TAIL_CHARS:] if self.status in ("failed", "timeout") else None,
        }

    def headline(self, part: Part) -> str:
        """One line for the console: status, time, the figures with targets."""
        text = f"{self.status} in {self.wall_s:.1f} s"
        if self.reason:
            text += f" ({self.reason})"
        for key, fig in self.figures(part).items() if self.status == "ok" else ():
            if fig["target"] and fig["value"] is not None:
                verdict = "PASS" if fig["meets"] else "FAIL"
                text += f"; {key} {fig['value']:.3g} (target {fig['target']}: {verdict})"
        return text

    def log_text(self, part: Part, python: str, dry_run: bool) -> str:
        command = " ".join([python, *part.argv(dry_run)])
        body = self.stderr[-TAIL_CHARS:] if self.stderr else ""
        if self.data is None and self.stdout:
            body += "\n--- stdout ---\n" + self.stdout[-TAIL_CHARS:]
        return f"\n=== {part.name}: {self.status} ({self.wall_s:.1f} s) ===\n$ {command}\n{body}\n"


def run_part(part: Part, python: str, dry_run: bool, timeout_s: float, env: dict, cwd: Path) -> Outcome:
    """Run `part` in a new process group; on timeout the whole group (DataLoader workers, pytest's children) ends."""
    if part.kind == "pytest" and not part.files:  # without files pytest would collect (and import) the whole suite
        return Outcome.skipped("no test file holds a test marked gpu")
    with tempfile.TemporaryDirectory(prefix=f"gpu-{part.name}-") as tmp:
        out_path, err_path = Path(tmp) / "stdout", Path(tmp) / "stderr"
        with out_path.open("w") as out, err_path.open("w") as err:
            t0 = time.monotonic()
            proc = subprocess.Popen(
                [python, *part.argv(dry_run)], cwd=cwd, env=env, stdout=out, stderr=err, start_new_session=True
            )
            timed_out = False
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                end_group(proc)
            wall_s = time.monotonic() - t0
        stdout, stderr = out_path.read_text(errors="replace"), err_path.read_text(errors="replace")
    outcome = Outcome("failed", wall_s=wall_s, stdout=stdout, stderr=stderr, returncode=proc.returncode)
    if timed_out:
        outcome.status, outcome.reason = "timeout", f"killed after its {timeout_s:.0f} s budget"
        return outcome
    if part.kind == "pytest":
        return pytest_outcome(outcome)
    outcome.data = parse_json(stdout)
    if proc.returncode == 0 and outcome.data is not None:
        outcome.status = "ok"
    else:
        outcome.data = None
        outcome.reason = last_error_line(stderr) or f"exit code {proc.returncode}, no JSON on stdout"
    return outcome


def end_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the part's process group, SIGKILL to what is left of it after a grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)  # the group's id is its leader's pid (start_new_session)
        except ProcessLookupError:
            break  # no process left in the group
        try:
            proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            pass
    proc.wait()


def parse_json(stdout: str) -> dict | None:
    """The benchmark's one JSON object: the whole stdout, else its last line that parses."""
    for text in (stdout, *reversed(stdout.strip().splitlines())):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict):
            return data
    return None


def last_error_line(stderr: str) -> str | None:
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else None


def pytest_outcome(outcome: Outcome) -> Outcome:
    """Counts and result line of `pytest -q`; all tests skipped (no CUDA) is a skipped part, not a failure."""
    lines = [line for line in outcome.stdout.splitlines() if PYTEST_COUNT.search(line) or "no tests ran" in line]
    result_line = lines[-1].strip("= ") if lines else None
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    for n, word in PYTEST_COUNT.findall(result_line or ""):
        key = "errors" if word.startswith("error") else word
        if key in counts:
            counts[key] = int(n)
    outcome.data = {
        "result_line": result_line,
        **counts,
        "returncode": outcome.returncode,
        "skip_reasons": sorted({m for m in re.findall(r"SKIPPED \[\d+\] \S+: (.+)", outcome.stdout)}),
        "output_tail": outcome.stdout[-TAIL_CHARS:],
    }
    if result_line is None:
        outcome.data, outcome.reason = None, last_error_line(outcome.stderr) or "no pytest result line"
    elif outcome.returncode == 0 and counts["passed"] == 0 and counts["skipped"] > 0:
        outcome.status = "skipped"
        outcome.reason = "every GPU test skipped itself: " + "; ".join(outcome.data["skip_reasons"])
    elif outcome.returncode == 0:
        outcome.status = "ok"
    else:
        outcome.reason = result_line
    return outcome
