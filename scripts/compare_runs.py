"""`python scripts/compare_runs.py ARGS` is `detector compare-runs ARGS` (detector/tools/compare_runs.py)."""

from detector.tools.compare_runs import main

if __name__ == "__main__":
    main()
