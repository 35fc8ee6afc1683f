"""`python scripts/benchmark_loader.py ARGS` is `detector benchmark --task loader ARGS`
(detector/tools/benchmarks/loader.py)."""

from detector.tools.benchmarks.loader import main

if __name__ == "__main__":
    main()
