"""Anchor matching at the paper's image size: IoU in blocks of anchors against one `box_iou` call,
IoU matching against ATSS, and what IoU-valued classification targets cost in the criterion.

    detector benchmark --task matcher [--size 800x1333 --boxes 200 --batch 2 --repeats 5 --json FILE]

Times `blockwise_box_iou` (the matcher's IoU) over the batch's ground truths × the RetinaNet
anchors (P3–P7, 9 per location) for several block sizes, the largest being one call, and the
whole `IoUMatcher` with the default blocks and the whole `ATSSMatcher`; then the criterion's
forward and backward on random predictions (80 classes) with the same loss, QFL, once with one-hot
targets and once with IoU targets (`criterion.cls_target=iou`: each positive's box decoded and its
IoU taken). Medians in milliseconds. Run it under both allocators (`LD_PRELOAD=…libjemalloc.so.2`)
to see the difference the blocks make.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from detector.losses import QualityFocalLoss, RetinaNetCriterion, SmoothL1Loss
from detector.models import AnchorGenerator
from detector.ops import ATSSMatcher, BoxCoder
from detector.ops.matcher import IoUMatcher, blockwise_box_iou
from detector.tools.benchmarks.timing import median_seconds


def median_ms(fn, repeats: int) -> float:
    """Median milliseconds of `repeats` calls of `fn` after one untimed call."""
    return median_seconds(fn, repeats) * 1000


def criterion_step(criterion: RetinaNetCriterion, outputs: dict, targets: list[dict]) -> None:
    """One forward and backward of the criterion (what a training step spends in it)."""
    leaves = {
        k: v.detach().requires_grad_(True) if k in ("cls_logits", "box_deltas") else v for k, v in outputs.items()
    }
    losses = criterion(leaves, targets)
    (losses["loss_cls"] + losses["loss_box"]).backward()


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
    results = {
        f"iou, blocks of 2^{b}": median_ms(lambda b=b: blockwise_box_iou(flat, anchors, 1 << b), args.repeats)
        for b in (16, 18, 20)
    }
    results["iou, one call"] = median_ms(lambda: blockwise_box_iou(flat, anchors, whole), args.repeats)
    results["IoUMatcher (default blocks)"] = median_ms(lambda: IoUMatcher()(anchors, boxes, valid), args.repeats)
    levels = [(height // s) * (width // s) * generator.num_anchors_per_location for s in generator.strides]
    results["ATSSMatcher"] = median_ms(
        lambda: ATSSMatcher()(anchors, boxes, valid, num_anchors_per_level=levels), args.repeats
    )
    outputs = {
        "cls_logits": torch.randn(args.batch, len(anchors), 80, generator=g) - 4,
        "box_deltas": torch.randn(args.batch, len(anchors), 4, generator=g) * 0.1,
        "anchors": anchors,
        "num_anchors_per_level": levels,
    }
    targets = [{"boxes": b, "labels": torch.randint(0, 80, (args.boxes,), generator=g)} for b in boxes]
    for target in ("onehot", "iou"):
        criterion = RetinaNetCriterion(
            QualityFocalLoss(), SmoothL1Loss(0.11), IoUMatcher(), BoxCoder(), cls_target=target
        )
        results[f"criterion, QFL, {target} targets"] = median_ms(
            lambda c=criterion: criterion_step(c, outputs, targets), args.repeats
        )
    print(
        f"{args.batch} × {args.boxes} boxes × {anchors.shape[0]:,} anchors ({height}×{width} padded), "
        f"{torch.get_num_threads()} threads, median of {args.repeats}:"
    )
    for name, ms in results.items():
        print(f"  {name:<32} {ms:8.1f} ms")
    report = {
        "settings": vars(args)
        | {"json": str(args.json), "threads": torch.get_num_threads(), "ld_preload": os.environ.get("LD_PRELOAD", "")},
        "anchors": anchors.shape[0],
        "milliseconds": results,
    }
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
