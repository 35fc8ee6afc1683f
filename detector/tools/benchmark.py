"""Time one part of the detector; `detector benchmark --task TASK --help` lists that task's ARGS.

Each task is a module of detector/tools/benchmarks/ that prints its figures and writes them to its `--json`.
"""

from __future__ import annotations

import argparse
import importlib

TASKS = {  # name: (module in detector/tools/benchmarks, what it times)
    "train": ("train", "our RetinaNet against torchvision's: training, inference, memory, FLOP rate"),
    "eval": ("evaluation", "COCO box evaluation: faster-coco-eval against pycocotools"),
    "loss": ("losses", "forward + backward of every loss; GHM-C vectorised against a loop"),
    "matcher": ("matcher", "IoU in blocks against one call, IoU matching against ATSS, IoU targets"),
    "loader": ("loader", "data loader images/s against training images/s, same config"),
}


def main(argv: list[str] | None = None, prog: str | None = None):
    width = max(map(len, TASKS))
    parser = argparse.ArgumentParser(
        prog=prog,
        usage="%(prog)s --task TASK [ARGS]",
        description=__doc__.splitlines()[0],
        epilog="tasks:\n" + "\n".join(f"  {name:<{width}}  {about}" for name, (_, about) in TASKS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,  # with --task, --help is the task's
        allow_abbrev=False,  # a task's own options are never taken for a prefix of these
    )
    parser.add_argument("--task", choices=TASKS, help="what to time")
    parser.add_argument("-h", "--help", action="store_true", help="this help, or with --task that task's")
    args, rest = parser.parse_known_args(argv)
    if args.task is None:
        if args.help:
            parser.print_help()
            parser.exit()
        parser.error(f"--task is required, one of: {', '.join(TASKS)}")
    module = importlib.import_module(f"detector.tools.benchmarks.{TASKS[args.task][0]}")
    return module.main(rest + ["--help"] * args.help, prog=f"{parser.prog} --task {args.task}")
