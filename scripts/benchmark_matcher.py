"""Anchor matching at the paper's image size: IoU in blocks of anchors against one `box_iou` call.

    python scripts/benchmark_matcher.py [--size 800x1333 --boxes 200 --batch 2 --repeats 5 --json FILE]

Times `blockwise_box_iou` (the matcher's IoU) over the batch's ground truths × the RetinaNet
anchors (P3–P7, 9 per location) for several block sizes, the largest being one call, and the
whole `IoUMatcher` with the default blocks; medians in milliseconds. Run it under both allocators
(`LD_PRELOAD=…libjemalloc.so.2`) to see the difference the blocks make.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from detector.models import AnchorGenerator  # noqa: E402
from detector.ops.matcher import IoUMatcher, blockwise_box_iou  # noqa: E402


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="800x1333")
    parser.add_argument("--boxes", type=int, default=200)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=Path("matcher_benchmark.json"))
    args = parser.parse_args(argv)
    height, width = (-(-int(v) // 128) * 128 for v in args.size.split("x"))
    generator = AnchorGenerator([32, 64, 128, 256, 512], 3, [0.5, 1.0, 2.0], [8, 16, 32, 64, 128])
    anchors = generator([torch.zeros(1, 1, height // s, width // s) for s in generator.strides], (height, width))
    g = torch.Generator().manual_seed(0)
    corner = torch.rand(args.batch, args.boxes, 2, generator=g) * (torch.tensor([width, height]) - 300)
    boxes = torch.cat([corner, corner + torch.rand(args.batch, args.boxes, 2, generator=g) * 280 + 16], -1)
    valid = torch.ones(args.batch, args.boxes, dtype=torch.bool)
    flat = boxes.reshape(-1, 4)
    whole = flat.shape[0] * anchors.shape[0]
    results = {f"iou, blocks of 2^{b}": median_ms(lambda b=b: blockwise_box_iou(flat, anchors, 1 << b), args.repeats)
               for b in (16, 18, 20)}
    results["iou, one call"] = median_ms(lambda: blockwise_box_iou(flat, anchors, whole), args.repeats)
    results["IoUMatcher (default blocks)"] = median_ms(lambda: IoUMatcher()(anchors, boxes, valid), args.repeats)
    print(f"{args.batch} × {args.boxes} boxes × {anchors.shape[0]:,} anchors ({height}×{width} padded), "
          f"{torch.get_num_threads()} threads, median of {args.repeats}:")
    for name, ms in results.items():
        print(f"  {name:<28} {ms:8.1f} ms")
    report = {"settings": vars(args) | {"json": str(args.json), "threads": torch.get_num_threads(),
                                        "ld_preload": os.environ.get("LD_PRELOAD", "")},
              "anchors": anchors.shape[0], "milliseconds": results}
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
