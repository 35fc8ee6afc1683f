"""Forward + backward time of every loss at detector scale, and GHM-C vectorised against a loop.

    detector benchmark --task loss [--anchors 100000 --classes 80 --boxes 2000 --repeats 7]

Classification losses run on [anchors, classes] logits with ~1 % positive anchors; box losses on
[boxes, 4] (deltas or xyxy boxes, as each loss takes). "focal, one block" is the focal loss fused
but computed over the whole matrix at once, against the blocks of rows `loss=focal` uses. Prints a
table of medians in milliseconds and writes the same figures to --json.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from detector import losses as L
from detector.losses.fused import summed_with_gradient
from detector.tools.benchmarks.timing import interleaved


def ghm_c_per_bin_loop(logits, targets, bins, momentum, acc_sum):
    """The straightforward GHM-C: one masked pass over the elements per bin (the official code's shape)."""
    edges = [i / bins for i in range(bins + 1)]
    edges[-1] += 1e-6
    g = (torch.sigmoid(logits.detach()) - targets).abs()
    weights = torch.zeros_like(logits)
    tot = max(logits.numel(), 1)
    n = 0
    for i in range(bins):
        inds = (g >= edges[i]) & (g < edges[i + 1])
        num = inds.sum().item()
        if num > 0:
            acc_sum[i] = momentum * acc_sum[i] + (1 - momentum) * num
            weights[inds] = tot / acc_sum[i]
            n += 1
    if n > 0:
        weights = weights / n
    return F.binary_cross_entropy_with_logits(logits, targets, weights, reduction="sum") / tot


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--anchors", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--boxes", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", default="loss_benchmark.json")
    args = parser.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(args.anchors, args.classes, generator=g) * 3 - 4
    targets = torch.zeros_like(logits)
    positives = torch.randperm(args.anchors, generator=g)[: args.anchors // 100]
    targets[positives, torch.randint(args.classes, (len(positives),), generator=g)] = 1.0
    image_index = torch.arange(args.anchors) % 2
    anchors = torch.rand(args.anchors, 4, generator=g) * 500
    anchors[:, 2:] += anchors[:, :2]
    xy = torch.rand(args.boxes, 2, generator=g) * 500
    gt_boxes = torch.cat([xy, xy + torch.rand(args.boxes, 2, generator=g) * 100 + 10], 1)
    pred_boxes = gt_boxes + torch.randn(args.boxes, 4, generator=g) * 5
    deltas, gt_deltas = torch.randn(args.boxes, 4, generator=g) * 0.3, torch.randn(args.boxes, 4, generator=g) * 0.3

    def cls_step(loss):
        def run():
            x = logits.clone().requires_grad_(True)
            extra = {"image_index": image_index, "anchors": anchors} if getattr(loss, "needs_anchors", False) else {}
            loss(x, targets, float(len(positives)), **extra).backward()

        return run

    def box_step(loss):
        pred, target = (pred_boxes, gt_boxes) if loss.input_space == "xyxy" else (deltas, gt_deltas)

        extra = {"image_size": torch.full((len(pred), 2), 600.0)} if getattr(loss, "needs_image_size", False) else {}

        def run():
            p = pred.clone().requires_grad_(True)
            loss(p, target, float(args.boxes), **extra).backward()

        return run

    cls_losses = {
        "ce": L.SigmoidCrossEntropyLoss(),
        "balanced_ce": L.SigmoidCrossEntropyLoss(0.75),
        "focal": L.FocalLoss(),
        "focal_star": L.FocalStarLoss(),
        "ghm_c": L.GHMCLoss(),
        "ohem": L.OHEMLoss(),
        "ohem nms_thresh=null": L.OHEMLoss(nms_thresh=None),
        "dice": L.DiceLoss(),
        "tversky": L.TverskyLoss(),
        "poly1_focal": L.Poly1Loss(),
        "poly1_ce": L.Poly1Loss(None, 0.0, 1.0),
        "qfl": L.QualityFocalLoss(),
        "vfl": L.VarifocalLoss(),
        "efl": L.EqualizedFocalLoss(),
    }
    box_losses = {
        "smooth_l1": L.SmoothL1Loss(),
        "l1": L.L1Loss(),
        "l2": L.L2Loss(),
        "huber": L.HuberLoss(),
        "balanced_l1": L.BalancedL1Loss(),
        "ghm_r": L.GHMRLoss(),
        "iou": L.IoULoss(),
        "giou": L.GIoULoss(),
        "diou": L.DIoULoss(),
        "ciou": L.CIoULoss(),
        "eiou": L.EIoULoss(),
        "focal_eiou": L.FocalEIoULoss(),
        "cdiou": L.CDIoULoss(),
        "alpha_iou": L.AlphaIoULoss(),
        "siou": L.SIoULoss(),
        "wiou": L.WiseIoULoss(),
        "mpdiou": L.MPDIoULoss(),
    }
    acc = [0.0] * 30

    def loop_step():
        x = logits.clone().requires_grad_(True)
        ghm_c_per_bin_loop(x, targets, 30, 0.75, acc).backward()

    steps = {f"loss={name}": cls_step(loss) for name, loss in cls_losses.items()}
    steps.update({f"box_loss={name}": box_step(loss) for name, loss in box_losses.items()})
    steps["ghm_c per-bin loop"] = loop_step
    focal = cls_losses["focal"]
    steps["focal, one block"] = cls_step(
        lambda x, y, normalizer: summed_with_gradient(x, y, focal._value_and_gradient, in_blocks=False) / normalizer
    )
    results = {name: seconds * 1000 for name, seconds in interleaved(steps, args.repeats).items()}
    vectorised, loop = L.GHMCLoss(30, 0.0), [0.0] * 30
    same = torch.allclose(vectorised(logits, targets, None), ghm_c_per_bin_loop(logits, targets, 30, 0.0, loop))
    print(
        f"forward + backward, median of {args.repeats}: {args.anchors:,} anchors × {args.classes} classes, "
        f"{args.boxes:,} boxes, {torch.get_num_threads()} threads"
    )
    for name, ms in results.items():
        print(f"  {name:<22} {ms:9.1f} ms")
    speedup = results["ghm_c per-bin loop"] / results["loss=ghm_c"]
    blocks = results["focal, one block"] / results["loss=focal"]
    print(f"GHM-C vectorised vs per-bin loop: {speedup:.1f}x faster, same value: {same}")
    print(f"focal loss in blocks of rows vs one block: {blocks:.1f}x faster")
    report = {
        "settings": vars(args),
        "milliseconds": results,
        "ghm_c_speedup": speedup,
        "ghm_c_same_value": same,
        "focal_blocks_speedup": blocks,
    }
    with open(args.json, "w") as file:
        json.dump(report, file, indent=2)
    return report


if __name__ == "__main__":
    main()
