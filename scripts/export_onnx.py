"""`python scripts/export_onnx.py ARGS` is `detector export-onnx ARGS` (detector/tools/export_onnx.py)."""

from detector.tools.export_onnx import main

if __name__ == "__main__":
    main()
