"""Set-level overlap losses over anchors (experimental: not from the detection literature).

Applied per class over the set of non-ignored anchors, with p = σ(x):
T_k = 1 − (Σ p·y + ε) / (Σ p·y + α Σ p(1 − y) + β Σ (1 − p) y + ε), loss = mean over classes.
Self-normalising: the criterion's positive count is ignored.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TverskyLoss(nn.Module):
    """Tversky loss (Salehi et al., 2017) per class; α weights false positives, β false negatives.
    Defaults α = 0.3, β = 0.7 (the paper's choice for recall-heavy segmentation), ε = 1."""

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, eps: float = 1.0):
        super().__init__()
        if alpha < 0 or beta < 0 or eps <= 0:
            raise ValueError(f"need alpha >= 0, beta >= 0 and eps > 0, got {alpha}, {beta}, {eps}")
        self.alpha, self.beta, self.eps = alpha, beta, eps

    def forward(self, logits: Tensor, targets: Tensor, normalizer: Tensor | float | None = None) -> Tensor:
        p = torch.sigmoid(logits)
        true_pos = (p * targets).sum(dim=0)
        false_pos = (p * (1 - targets)).sum(dim=0)
        false_neg = ((1 - p) * targets).sum(dim=0)
        index = (true_pos + self.eps) / (true_pos + self.alpha * false_pos + self.beta * false_neg + self.eps)
        return (1 - index).mean() if len(index) else logits.sum() * 0


class DiceLoss(TverskyLoss):
    """Dice loss (Milletari et al., V-Net 2016): the Tversky loss with α = β = 0.5."""

    def __init__(self, eps: float = 1.0):
        super().__init__(alpha=0.5, beta=0.5, eps=eps)
