"""`python scripts/benchmark.py ARGS` is `detector benchmark --task train ARGS`
(detector/tools/benchmarks/train.py)."""

from detector.tools.benchmarks.train import main

if __name__ == "__main__":
    main()
