"""One writing run per store: a file lock beside the store (`filelock`), and a record of who holds it.

`StoreLock(path)` locks `PATH.lock` (beside the store, so a store not yet created can be locked) with
`filelock.FileLock`: an OS lock (flock), released by the system when its holder dies, with filelock's own marker
fallback on file systems without flock. The holder writes `PATH.lock.json` (host, pid, start time, command) so a
second run can say who holds the store; a record found by the run that has just acquired the lock was left by a
holder that ended without releasing it (killed, crashed): that stale lock is taken over, and `took_over` says from
whom (`alive` False when it was a process of this host that no longer exists).

A second run either waits up to `wait_s` seconds for the lock, or refuses at once (`wait_s=0`, the default)
with `StoreBusy`, whose message names the holder.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)


class StoreBusy(RuntimeError):
    """Another run holds the store's lock; the message names it and what to do."""


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a store's lock."""

    host: str
    pid: int
    since: str
    command: str = ""

    @classmethod
    def current(cls) -> Holder:
        argv = list(getattr(sys, "orig_argv", sys.argv))[:4]  # e.g. 'python -m localize run'
        command = " ".join(" ".join([Path(argv[0]).name, *argv[1:]]).split())[:80] if argv else ""  # one line
        return cls(socket.gethostname(), os.getpid(), time.strftime("%Y-%m-%d %H:%M:%S %Z"), command)

    @property
    def alive(self) -> bool | None:
        """Whether the process still runs: None when it ran on another host (it cannot be checked from here)."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # it exists, under another user
            return True
        return True

    def describe(self) -> str:
        what = f" ({self.command})" if self.command else ""
        return f"pid {self.pid} on {self.host}{what}, since {self.since}"


class StoreLock:
    """Context manager: hold the lock of the store at `path` for one writing run (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, *, wait_s: float = 0.0, what: str = "store") -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.record_path = self.path.with_name(self.path.name + ".lock.json")
        self.wait_s = max(0.0, float(wait_s))
        self.what = what
        self.took_over: Holder | None = None
        self._lock = FileLock(self.lock_path)

    def __enter__(self) -> StoreLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=self.wait_s, poll_interval=0.2)
        except Timeout:
            holder = self.holder()
            who = holder.describe() if holder is not None else "a process that has not recorded itself yet"
            waited = f" (waited {self.wait_s:g} s)" if self.wait_s else ""
            raise StoreBusy(
                f"{self.path}: this {self.what} is being written by another run: {who}{waited}. Wait for it to "
                "finish, or add --wait SECONDS to wait for it; two runs never write one "
                f"{self.what} at once"
            ) from None
        try:
            self.took_over = self.holder()
            if self.took_over is not None:
                state = {False: "which no longer runs", None: "on another host"}.get(self.took_over.alive, "")
                log.warning(
                    "%s: taking over the stale lock of %s %s (it ended without releasing it)",
                    self.path,
                    self.took_over.describe(),
                    state,
                )
            self._write_record(Holder.current())
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            self.record_path.unlink(missing_ok=True)
        finally:
            self._lock.release()

    def holder(self) -> Holder | None:
        """The recorded holder, or None (no record, or an unreadable one)."""
        try:
            return Holder(**json.loads(self.record_path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None

    def _write_record(self, holder: Holder) -> None:
        tmp = self.record_path.with_name(f".{self.record_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(holder)), encoding="utf-8")
        os.replace(tmp, self.record_path)
