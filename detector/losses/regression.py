"""Box regression losses on R-CNN deltas.

Interface: forward(pred [P, 4], target [P, 4], normalizer) → scalar over the P positive anchors,
Σ / normalizer. The class attribute `input_space` tells the criterion what to pass:
"deltas" (encoded against the anchor) or "xyxy" (decoded boxes in pixels).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class SmoothL1Loss(nn.Module):
    """Smooth L1 (Girshick, Fast R-CNN): 0.5·d²/β if |d| < β else |d| − 0.5·β, on deltas.

    Default β = 1/9 ≈ 0.11 as in Detectron's RetinaNet (the paper's code); β = 0 is L1,
    detectron2's default.
    """

    input_space = "deltas"

    def __init__(self, beta: float = 0.11):
        super().__init__()
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.beta = beta

    def forward(self, pred: Tensor, target: Tensor, normalizer: Tensor | float) -> Tensor:
        return F.smooth_l1_loss(pred, target, beta=self.beta, reduction="sum") / normalizer
