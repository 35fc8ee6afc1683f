"""Distribution Focal Loss (Li et al., "Generalized Focal Loss", NeurIPS 2020, eq. 6): for a box side with
target distance y between the bins y_i = ⌊y⌋ and y_{i+1} = y_i + 1, and S = softmax of that side's logits,

  DFL(S, y) = −((y_{i+1} − y) log S_i + (y − y_i) log S_{i+1}),

the cross-entropy towards the two bins around y, weighted so that the distribution whose integral is y
with all its mass on those two bins is the minimum. Each positive's four sides are averaged, the sum over
positives is divided by the criterion's normalizer (the positive count); the criterion weights it by
`dfl_weight` (0.25, mmdetection's GFL). Targets come from `detector.ops.distribution.boxes_to_distances`,
so y ∈ [0, n − 0.01] always has two bins.
"""

from __future__ import annotations

from torch import Tensor, nn


class DistributionFocalLoss(nn.Module):
    """DFL on [P, 4, n + 1] side logits against [P, 4] target distances in bins."""

    def per_box(self, logits: Tensor, targets: Tensor) -> Tensor:
        left = targets.floor().long()
        weight_right = targets - left
        log_probs = logits.log_softmax(dim=-1)
        log_left = log_probs.gather(-1, left.unsqueeze(-1)).squeeze(-1)
        log_right = log_probs.gather(-1, (left + 1).unsqueeze(-1)).squeeze(-1)
        return -((1 - weight_right) * log_left + weight_right * log_right).mean(dim=-1)

    def forward(self, logits: Tensor, targets: Tensor, normalizer: Tensor | float) -> Tensor:
        if logits.shape[:-1] != targets.shape or logits.shape[-2:-1] != (4,):
            raise ValueError(
                f"DFL takes [P, 4, n + 1] logits and [P, 4] targets, "
                f"got {tuple(logits.shape)} and {tuple(targets.shape)}"
            )
        return self.per_box(logits, targets).sum() / normalizer
