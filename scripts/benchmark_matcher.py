"""`python scripts/benchmark_matcher.py ARGS` is `detector benchmark --task matcher ARGS`
(detector/tools/benchmarks/matcher.py)."""

from detector.tools.benchmarks.matcher import main

if __name__ == "__main__":
    main()
