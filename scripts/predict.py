"""`python scripts/predict.py ARGS` is `detector predict ARGS` (detector/tools/predict.py)."""

from detector.tools.predict import main

if __name__ == "__main__":
    main()
