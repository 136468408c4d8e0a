"""`python -m smallmodels train --corpus-seed S --out DIR`: see `smallmodels.train`."""

import sys

from smallmodels.train import main

if __name__ == "__main__":
    sys.exit(main())
