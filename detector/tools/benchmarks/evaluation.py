"""COCO box evaluation time: faster-coco-eval against pycocotools on the same detections.

    detector benchmark --task eval [--images 2000 --detections 100 --repeats 3 --json FILE]

Fabricates a COCO ground truth (80 categories, 1–15 boxes of every size per 640×480 image, some
crowd) and `--detections` scored detections per image (jittered copies of the ground truth, some
with the wrong class, and random boxes), then times `CocoEvaluator.summarize()` for each backend,
interleaved — end to end and split into loading the results (Python in both libraries) and
evaluate + accumulate + summarize, and the TIDE error breakdown (`detector.engine.errors`) — and
checks that the 12 stats are identical.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
from pathlib import Path

import torch
from pycocotools.coco import COCO

from detector.engine.evaluator import CocoEvaluator
from detector.tools.benchmarks.timing import timed

WIDTH, HEIGHT, CATEGORIES = 640, 480, 80


def ground_truth(images: int, generator: torch.Generator) -> dict:
    annotations = []
    for image_id in range(1, images + 1):
        count = int(torch.randint(1, 16, (1,), generator=generator))
        size = torch.exp(torch.empty(count, 2).uniform_(2.0, 5.8, generator=generator))  # 7–330 px
        corner = torch.rand(count, 2, generator=generator) * (torch.tensor([WIDTH, HEIGHT]) - size).clamp(min=1)
        crowd = torch.rand(count, generator=generator) < 0.02
        for box, is_crowd, label in zip(
            torch.cat([corner, size], 1).tolist(),
            crowd.tolist(),
            torch.randint(1, CATEGORIES + 1, (count,), generator=generator).tolist(),
        ):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": int(is_crowd),
                }
            )
    return {
        "images": [{"id": i, "width": WIDTH, "height": HEIGHT, "file_name": f"{i}.jpg"} for i in range(1, images + 1)],
        "annotations": annotations,
        "categories": [{"id": c, "name": f"c{c}"} for c in range(1, CATEGORIES + 1)],
    }


def detections(coco: COCO, per_image: int, generator: torch.Generator) -> list[tuple[dict, dict]]:
    """(target, detection) pairs in the form `CocoEvaluator.update` takes (xyxy, 0-based labels)."""
    pairs = []
    for image_id in coco.getImgIds():
        gt = [a for a in coco.imgToAnns[image_id] if not a["iscrowd"]]
        boxes = torch.tensor([a["bbox"] for a in gt]).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        labels = torch.tensor([a["category_id"] - 1 for a in gt], dtype=torch.long)
        copies = min(len(gt) * 3, per_image // 2)
        pick = (
            torch.randint(0, max(len(gt), 1), (copies,), generator=generator)
            if len(gt)
            else torch.zeros(0, dtype=torch.long)
        )
        jitter = torch.randn(copies, 4, generator=generator) * 0.08 * (boxes[pick, 2:] - boxes[pick, :2]).repeat(1, 2)
        hit_boxes = boxes[pick] + jitter
        hit_labels = torch.where(
            torch.rand(copies, generator=generator) < 0.8,
            labels[pick],
            torch.randint(0, CATEGORIES, (copies,), generator=generator),
        )
        extra = per_image - copies
        corner = torch.rand(extra, 2, generator=generator) * torch.tensor([WIDTH - 20, HEIGHT - 20])
        random_boxes = torch.cat([corner, corner + 10 + torch.rand(extra, 2, generator=generator) * 200], 1)
        all_boxes = torch.cat([hit_boxes, random_boxes]).clamp(min=0)
        all_boxes[:, 0::2] = all_boxes[:, 0::2].clamp(max=WIDTH)
        all_boxes[:, 1::2] = all_boxes[:, 1::2].clamp(max=HEIGHT)
        scores = torch.cat(
            [0.3 + 0.7 * torch.rand(copies, generator=generator), 0.6 * torch.rand(extra, generator=generator)]
        )
        pairs.append(
            (
                {"image_id": image_id, "orig_size": (HEIGHT, WIDTH), "size": (HEIGHT, WIDTH)},
                {
                    "boxes": all_boxes,
                    "scores": scores,
                    "labels": torch.cat([hit_labels, torch.randint(0, CATEGORIES, (extra,), generator=generator)]),
                },
            )
        )
    return pairs


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--detections", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("evaluation_benchmark.json"))
    args = parser.parse_args(argv)
    generator = torch.Generator().manual_seed(0)
    coco = COCO()
    coco.dataset = ground_truth(args.images, generator)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    pairs = detections(coco, args.detections, generator)
    backends = ("pycocotools", "faster_coco_eval")
    seconds: dict[str, dict[str, list[float]]] = {
        b: {"total": [], "load": [], "evaluate": [], "errors": []} for b in backends
    }
    stats = {}
    for _ in range(args.repeats):
        for backend in backends:
            evaluator = CocoEvaluator(coco, list(range(1, CATEGORIES + 1)), backend)
            for target, detection in pairs:
                evaluator.update([target], [detection])
            (stats[backend], _), total = timed(evaluator.summarize)
            seconds[backend]["total"].append(total)
            for phase in ("load", "evaluate", "errors"):
                seconds[backend][phase].append(evaluator.seconds[phase])
    median = {b: {phase: statistics.median(v) for phase, v in phases.items()} for b, phases in seconds.items()}
    speedup = {
        phase: median["pycocotools"][phase] / median["faster_coco_eval"][phase] for phase in ("total", "evaluate")
    }
    breakdown_cost = {b: median[b]["total"] / (median[b]["total"] - median[b]["errors"]) for b in backends}
    report = {
        "settings": vars(args) | {"json": str(args.json)},
        "seconds": median,
        "speedup": speedup,
        "with_breakdown_over_without": breakdown_cost,
        "identical_stats": stats["pycocotools"] == stats["faster_coco_eval"],
        "stats": stats,
    }
    print(
        f"{args.images} images × {args.detections} detections, {len(coco.dataset['annotations'])} ground-truth boxes;"
        f" median of {args.repeats} (load: index and load the results; evaluate: evaluate + accumulate + summarize)"
    )
    for backend in backends:
        print(
            f"  {backend:<17} total {median[backend]['total']:6.2f} s  load {median[backend]['load']:5.2f} s"
            f"  evaluate {median[backend]['evaluate']:6.2f} s  error breakdown {median[backend]['errors']:5.2f} s"
            f" (total {breakdown_cost[backend]:.2f}× the total without it)"
        )
    print(
        f"faster-coco-eval is {speedup['total']:.1f}× faster end to end, {speedup['evaluate']:.1f}× in evaluate; "
        f"identical 12 stats: {report['identical_stats']}"
    )
    if not report["identical_stats"]:
        for name in stats["pycocotools"]:
            print(f"  {name}: {stats['pycocotools'][name]} vs {stats['faster_coco_eval'][name]}")
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
