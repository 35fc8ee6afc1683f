"""Detections drawn on images (torchvision's `draw_bounding_boxes`): predictions in red with
class name and score, ground truth in green; precision–recall curves as a matplotlib figure."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchvision.utils import draw_bounding_boxes

PREDICTED, GROUND_TRUTH = (230, 40, 40), (40, 200, 60)


def draw_detections(
    image: np.ndarray,
    boxes: Tensor,
    labels: Tensor,
    scores: Tensor,
    class_names: list[str],
    ground_truth: Tensor | None = None,
) -> Tensor:
    """[3, H, W] uint8 picture of an H × W × 3 uint8 image with xyxy boxes in its pixels."""
    picture = torch.tensor(image).permute(2, 0, 1)  # a copy: decoded arrays may be read-only
    width = max(1, round(max(image.shape[:2]) / 300))
    if ground_truth is not None and len(ground_truth):
        picture = draw_bounding_boxes(picture, ground_truth.float(), colors=GROUND_TRUTH, width=width)
    if len(boxes):
        captions = [f"{class_names[int(label)]} {float(score):.2f}" for label, score in zip(labels, scores)]
        picture = draw_bounding_boxes(picture, boxes.float(), captions, colors=PREDICTED, width=width)
    return picture


def pr_curve_figure(curves: dict, title: str):
    """A matplotlib figure of `detector.engine.evaluator.pr_curves` (precision against recall at IoU
    .5 and .75, the mean over classes, with each curve's AP), or None without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    figure = Figure(figsize=(5, 4), layout="tight")
    axes = figure.subplots()
    for name, style in (("AP50", "-"), ("AP75", "--")):
        points = [(r, p) for r, p in zip(curves["recall"], curves[name]) if p > -1]
        if points:
            recall, precision = zip(*points)
            label = f"IoU 0.{name[2:]}: AP {sum(precision) / len(precision):.1f}"
            axes.plot(recall, precision, style, label=label)
    axes.set(xlabel="recall", ylabel="precision (%), mean over classes", xlim=(0, 1), ylim=(0, 100), title=title)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper right")
    return figure


def error_figure(breakdown: dict, title: str):
    """A bar chart of `detector.engine.errors.error_breakdown`: the AP50 each kind of error costs,
    with its count; None without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    figure = Figure(figsize=(5, 3.2), layout="tight")
    axes = figure.subplots()
    kinds = list(breakdown["dAP"])
    bars = axes.bar(kinds, [breakdown["dAP"][k] for k in kinds], color="tab:red")
    axes.bar_label(bars, [f"{breakdown['dAP'][k]:.1f}\n({breakdown['count'][k]})" for k in kinds], fontsize=8)
    axes.set(ylabel="AP50 gained if fixed", title=f"{title}: AP50 {breakdown['AP50']:.1f}")
    axes.margins(y=0.25)
    return figure
