"""The exit code of a LightningCLI run that SIGTERM stopped.

Lightning catches SIGTERM (a scheduler's pre-emption, `kill`, the study's stop), saves, and ends the run by raising
`SIGTERMException`, a `SystemExit` without a code: the process would exit with 0, and a stopped run would look
finished to a scheduler or to `python -m study`, which would export its checkpoint as if the run had reached its
last step.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

from pytorch_lightning.utilities.exceptions import SIGTERMException

SIGTERM_EXIT = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM (143)


def exit_code(run: Callable[[], object]) -> int:
    """0 when `run()` returns, `SIGTERM_EXIT` when Lightning stopped it on SIGTERM."""
    try:
        run()
    except SIGTERMException:
        print("stopped by SIGTERM before the end: the run is not finished (resume it from its last.ckpt)",
              file=sys.stderr)  # fmt: skip
        return SIGTERM_EXIT
    return 0
