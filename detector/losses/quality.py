"""IoU-aware classification losses: the targets of positives are the IoU of their predicted box
with their ground truth (`criterion.cls_target=iou`), 0 elsewhere; both losses set `soft_targets`.

  QFL(σ) = −|y − σ|^β · ((1 − y) log(1 − σ) + y log σ)                 (Li et al., Generalized Focal
         Loss, NeurIPS 2020; β = 2), the modulating factor with gradient as in the paper's code.
  VFL(p, q) = −q (q log p + (1 − q) log(1 − p))   for q > 0              (Zhang et al., VarifocalNet,
            = −α p^γ log(1 − p)                  for q = 0              CVPR 2021; α = 0.75, γ = 2),
         i.e. BCE(p, q) weighted by q on positives and by α p^γ on negatives (weights with gradient,
         as in mmdetection's implementation).

Both are summed over the elements and divided by the criterion's normalizer (the positive count).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detector.losses.classification import check_alpha, check_gamma


class QualityFocalLoss(nn.Module):
    """Quality Focal Loss, default β = 2 (the paper's)."""

    soft_targets = True

    def __init__(self, beta: float = 2.0):
        super().__init__()
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.beta = beta

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:
        modulator = (targets - torch.sigmoid(logits)).abs().pow(self.beta)
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * modulator

    def forward(self, logits: Tensor, targets: Tensor, normalizer: Tensor | float) -> Tensor:
        return self.elementwise(logits, targets).sum() / normalizer


class VarifocalLoss(nn.Module):
    """Varifocal Loss, defaults α = 0.75, γ = 2 (the paper's)."""

    soft_targets = True

    def __init__(self, alpha: float = 0.75, gamma: float = 2.0):
        super().__init__()
        check_alpha(alpha)
        check_gamma(gamma)
        self.alpha, self.gamma = alpha, gamma

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:
        positive = targets > 0
        weight = torch.where(positive, targets, self.alpha * torch.sigmoid(logits).pow(self.gamma))
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * weight

    def forward(self, logits: Tensor, targets: Tensor, normalizer: Tensor | float) -> Tensor:
        return self.elementwise(logits, targets).sum() / normalizer
