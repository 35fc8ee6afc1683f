"""`python scripts/benchmark_losses.py ARGS` is `detector benchmark --task loss ARGS`
(detector/tools/benchmarks/losses.py)."""

from detector.tools.benchmarks.losses import main

if __name__ == "__main__":
    main()
