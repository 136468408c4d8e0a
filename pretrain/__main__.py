"""`python -m pretrain {fit,validate,export} ...` (see pretrain.cli)."""

from __future__ import annotations

import sys

from pretrain.cli import main

if __name__ == "__main__":
    sys.exit(main())
