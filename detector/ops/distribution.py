"""GFL's box representation (Li et al., "Generalized Focal Loss", NeurIPS 2020, §3.3): each side of a box
is a discrete distribution over the distances 0, 1, …, n (n = `reg_max`, 16 in the paper) from the anchor
centre, in strides of the anchor's pyramid level.

  S = softmax(logits) over the n + 1 bins,  d = Σ_i i · S_i  (the integral),
  box = (c_x − d_left·s, c_y − d_top·s, c_x + d_right·s, c_y + d_bottom·s),  s the level's stride.

The sides are ordered (left, top, right, bottom). Targets are clamped to [0, n − 0.01], as the official
code does, so that every target has two neighbouring bins, y_i ≤ y < y_{i+1}.
"""

from __future__ import annotations

import torch
from torch import Tensor


def integral(logits: Tensor) -> Tensor:
    """[..., 4, n + 1] logits → [..., 4] expected distances, in bins (strides), in float32 at least
    (elementwise, so that autocast cannot lower it as it would a matmul)."""
    probs = logits.softmax(dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))
    return (probs * torch.arange(logits.shape[-1], dtype=probs.dtype, device=logits.device)).sum(dim=-1)


def distances_to_boxes(anchors: Tensor, distances: Tensor, strides: Tensor) -> Tensor:
    """anchors [..., 4] xyxy, distances [..., 4] in strides, strides [...] → boxes [..., 4] xyxy, in
    float32 at least."""
    dtype = torch.promote_types(distances.dtype, torch.float32)
    anchors, distances = anchors.to(dtype), distances.to(dtype)
    centre = (anchors[..., :2] + anchors[..., 2:]) / 2
    scaled = distances * strides.to(dtype).unsqueeze(-1)
    return torch.cat([centre - scaled[..., :2], centre + scaled[..., 2:]], dim=-1)


def boxes_to_distances(anchors: Tensor, boxes: Tensor, strides: Tensor, reg_max: int) -> Tensor:
    """The targets: distances [..., 4] from each anchor centre to its box's sides, in strides, clamped to
    [0, reg_max − 0.01]."""
    centre = (anchors[..., :2] + anchors[..., 2:]) / 2
    sides = torch.cat([centre - boxes[..., :2], boxes[..., 2:] - centre], dim=-1)
    return (sides / strides.to(sides.dtype).unsqueeze(-1)).clamp(0.0, reg_max - 0.01)


def predicted_boxes(outputs: dict, rows: Tensor, box_coder) -> Tensor:
    """The predicted xyxy boxes [N, 4] (float32) of the given rows of the flattened (B·A) anchor rows, in
    whichever representation the model gave: "box_deltas" (`box_coder`) or "box_distribution" (the integral
    above, with `outputs["anchor_strides"]`)."""
    num_anchors = outputs["anchors"].shape[0]
    anchors = outputs["anchors"][rows % num_anchors]
    if "box_distribution" in outputs:
        distribution = outputs["box_distribution"].flatten(0, 1)[rows].float()
        return distances_to_boxes(anchors, integral(distribution), outputs["anchor_strides"][rows % num_anchors])
    return box_coder.decode(anchors, outputs["box_deltas"].flatten(0, 1)[rows].float())
