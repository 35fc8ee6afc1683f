"""`python scripts/benchmark_evaluation.py ARGS` is `detector benchmark --task eval ARGS`
(detector/tools/benchmarks/evaluation.py)."""

from detector.tools.benchmarks.evaluation import main

if __name__ == "__main__":
    main()
