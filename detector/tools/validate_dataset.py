"""Check a COCO-format dataset before training on it.

    detector validate-data ANNOTATIONS.json IMAGE_DIR [--no-decode] [--show 20]

Reports every problem with its file and image or annotation id, and what training does about it:
errors (training cannot start: malformed or truncated JSON with line and column, missing keys,
duplicate ids, no categories), left-out images (missing, undecodable, or size unlike the JSON),
dropped annotations (unknown category, no image, NaN/inf or empty boxes), fixes (boxes clipped
to the image, grayscale/RGBA/CMYK/16-bit converted, EXIF orientation applied) and notes (images
without annotations kept as negatives, crowd regions kept as ignore regions). Ends with a
summary table. Exit code 1 when training cannot proceed, 0 otherwise. Every image is decoded
unless --no-decode (training itself runs the checks that need no decoding before it starts).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from detector.data.validation import validate


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("annotations", type=Path)
    parser.add_argument("image_dir", type=Path)
    parser.add_argument("--no-decode", action="store_true", help="check that files exist, do not decode them")
    parser.add_argument("--show", type=int, default=20, help="problems listed per kind (all are counted)")
    args = parser.parse_args(argv)
    report, data = validate(args.annotations, args.image_dir, decode=not args.no_decode)
    by_kind = defaultdict(list)
    for problem in report.problems:
        by_kind[problem.kind].append(problem)
    for problems in by_kind.values():
        for problem in problems[: args.show]:
            print(problem)
        if len(problems) > args.show:
            print(f"  … and {len(problems) - args.show} more {problems[0].kind}")
    print("\n" + report.summary())
    if data is None:
        print(f"\n{args.annotations}: training cannot proceed ({len(report.errors)} errors)")
        return 1
    print(f"\n{args.annotations}: {len(data['images'])} images and {len(data['annotations'])} annotations usable")
    return 0


if __name__ == "__main__":
    sys.exit(main())
