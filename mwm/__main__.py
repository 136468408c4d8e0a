"""`python -m mwm ...`, the same as the `mwm` command."""

import sys

from mwm.cli import main

if __name__ == "__main__":
    sys.exit(main())
