"""`python -m study --config configs/experiment/X.yaml [--out DIR] [--corpus DIR] [--report-only]`."""

from __future__ import annotations

import sys

from study.cli import main

if __name__ == "__main__":
    sys.exit(main())
