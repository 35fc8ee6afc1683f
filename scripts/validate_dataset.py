"""`python scripts/validate_dataset.py ARGS` is `detector validate-data ARGS` (detector/tools/validate_dataset.py)."""

import sys

from detector.tools.validate_dataset import main

if __name__ == "__main__":
    sys.exit(main())
