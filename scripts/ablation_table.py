"""`python scripts/ablation_table.py ARGS` is `detector ablation-table ARGS` (detector/tools/ablation_table.py)."""

from detector.tools.ablation_table import main

if __name__ == "__main__":
    main()
