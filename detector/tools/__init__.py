"""`detector`, the console command for the tools: `detector SUBCOMMAND [ARGS]`, `detector SUBCOMMAND --help`.
Each subcommand is a module here with a `main(argv, prog)`; `python train.py` and `python evaluate.py`
stay the way to train and evaluate."""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {  # name: (module, what it does)
    "predict": ("predict", "detect objects in image files with a checkpoint"),
    "export-onnx": ("export_onnx", "export a checkpoint's network to ONNX and check it with onnxruntime"),
    "convert-torchvision": ("convert_torchvision", "convert torchvision RetinaNet weights into a checkpoint"),
    "validate-data": ("validate_dataset", "check a COCO-format dataset before training on it"),
    "ablation-table": ("ablation_table", "turn a finished multirun into a table beside the paper's"),
    "compare-runs": ("compare_runs", "compare runs or a multirun in one Markdown report"),
    "pretrain-backbone": ("pretrain_backbone", "pretrain a ResNet body on the glyph classification task"),
    "benchmark": ("benchmark", "time training against torchvision's, evaluation, losses, matching or loading"),
}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [f"  {name:<{width}}  {about}" for name, (_, about) in SUBCOMMANDS.items()]
    return "usage: detector SUBCOMMAND [ARGS] (detector SUBCOMMAND --help)\n\nsubcommands:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] not in SUBCOMMANDS:
        print(f"detector: unknown subcommand {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"detector.tools.{SUBCOMMANDS[argv[0]][0]}")
    result = module.main(argv[1:], prog=f"detector {argv[0]}")
    return result if isinstance(result, int) else 0
