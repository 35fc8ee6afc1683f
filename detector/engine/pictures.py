"""Detections drawn on images (torchvision's `draw_bounding_boxes`): predictions in red with
class name and score, ground truth in green."""

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
