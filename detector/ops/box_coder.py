"""R-CNN box deltas (Girshick et al.): the regression target of every anchor-based detector."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


class BoxCoder:
    """Encode xyxy boxes relative to anchors as (dx, dy, dw, dh) and decode them back.

    dx = wx·(x − x_a)/w_a, dy = wy·(y − y_a)/h_a, dw = ww·log(w/w_a), dh = wh·log(h/h_a),
    with (x, y) box centres. Decoding clamps dw, dh at `clamp` (log(1000/16), as detectron2 and
    torchvision) so that exp never overflows. RetinaNet uses weights (1, 1, 1, 1).
    """

    def __init__(self, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), clamp: float = math.log(1000.0 / 16)):
        if len(weights) != 4 or min(weights) <= 0:
            raise ValueError(f"box coder weights must be 4 positive numbers, got {list(weights)}")
        self.weights = tuple(float(w) for w in weights)
        self.clamp = float(clamp)

    def encode(self, anchors: Tensor, boxes: Tensor) -> Tensor:
        """anchors, boxes [..., 4] xyxy (broadcastable) → deltas [..., 4]."""
        wx, wy, ww, wh = self.weights
        aw, ah, ax, ay = _size_center(anchors)
        bw, bh, bx, by = _size_center(boxes)
        return torch.stack(
            [wx * (bx - ax) / aw, wy * (by - ay) / ah, ww * torch.log(bw / aw), wh * torch.log(bh / ah)], dim=-1
        )

    def decode(self, anchors: Tensor, deltas: Tensor) -> Tensor:
        """anchors [..., 4] xyxy, deltas [..., 4] (broadcastable) → boxes [..., 4] xyxy."""
        wx, wy, ww, wh = self.weights
        aw, ah, ax, ay = _size_center(anchors.to(deltas.dtype))
        cx = deltas[..., 0] / wx * aw + ax
        cy = deltas[..., 1] / wy * ah + ay
        w = torch.exp((deltas[..., 2] / ww).clamp(max=self.clamp)) * aw
        h = torch.exp((deltas[..., 3] / wh).clamp(max=self.clamp)) * ah
        return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def _size_center(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return w, h, boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h
