"""`python scripts/convert_torchvision.py ARGS` is `detector convert-torchvision ARGS`
(detector/tools/convert_torchvision.py)."""

from detector.tools.convert_torchvision import main

if __name__ == "__main__":
    main()
