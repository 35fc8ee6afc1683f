"""Gradient Harmonizing Mechanism (Li, Liu, Wang, "Gradient Harmonized Single-stage Detector",
AAAI 2019): down-weight examples whose gradient norm falls in crowded regions of its density.

Both losses keep a per-bin EMA of example counts in a registered buffer (`acc_sum`, saved in
checkpoints). Under DDP each process keeps its own EMA of its own counts, as the official code
does. Both are `per_level` by default: the criterion calls them once per FPN level and sums, as the
official code does (each level has its own N and advances the shared EMA once). Binning is
vectorised and exact: ⌊g·bins⌋, then moved by one where the official code's edge comparisons
(edges[i] ≤ g < edges[i+1]) disagree with the rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detector.losses.fused import log1p_exp, summed_with_gradient


def _check(bins: int, momentum: float) -> None:
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")


def bin_index(g: Tensor, edges: Tensor) -> Tensor:
    """i with edges[i] ≤ g < edges[i+1] (the last bin also takes g ≥ its upper edge), for `bins`
    equal bins on [0, 1] whose last edge may be moved."""
    bins = len(edges) - 1
    index = (g * bins).long().clamp_(0, bins - 1)
    index -= (g < edges.take(index)).long()
    index += ((g >= edges.take(index + 1)) & (index < bins - 1)).long()
    return index


def harmonizing_weights(g: Tensor, edges: Tensor, acc_sum: Tensor, momentum: float, update: bool = True) -> Tensor:
    """Weight of each element: tot / (smoothed count of its bin) / (number of non-empty bins).

    When momentum > 0, the smoothed count is `acc_sum`, advanced in place (EMA over iterations,
    non-empty bins only) unless `update` is false, which reads the weights of the last update.
    """
    bins = len(edges) - 1
    index = bin_index(g, edges)
    counts = (
        torch.zeros(bins, dtype=torch.long, device=g.device)
        .scatter_add_(  # bincount would sync on CUDA
            0, index.flatten(), torch.ones((), dtype=torch.long, device=g.device).expand(index.numel())
        )
        .to(acc_sum.dtype)
    )
    non_empty = counts > 0
    if momentum > 0:
        if update:
            acc_sum.copy_(torch.where(non_empty, momentum * acc_sum + (1 - momentum) * counts, acc_sum))
        per_bin = acc_sum
    else:
        per_bin = counts
    tot = float(g.numel()) if g.numel() else 1.0
    weight_of_bin = torch.where(non_empty, tot / per_bin.clamp(min=1e-12), torch.zeros_like(per_bin))
    return (weight_of_bin / non_empty.sum().clamp(min=1)).take(index)


class _GradientHarmonizing(nn.Module):
    """Shared state of GHM-C and GHM-R: `bins` equal bins on [0, 1] whose last edge is `last_edge`,
    the EMA of per-bin counts (`acc_sum`, a buffer so that checkpoints keep it), and `per_level`
    (the criterion's cue to call the loss once per FPN level)."""

    def __init__(self, bins: int, momentum: float, last_edge: float, per_level: bool):
        super().__init__()
        _check(bins, momentum)
        self.bins, self.momentum, self.per_level = bins, momentum, per_level
        edges = torch.arange(bins + 1, dtype=torch.float32) / bins
        edges[-1] = last_edge
        self.register_buffer("edges", edges, persistent=False)
        self.register_buffer("acc_sum", torch.zeros(bins))

    def weights(self, g: Tensor, update: bool = True) -> Tensor:
        return harmonizing_weights(g, self.edges.to(g.dtype), self.acc_sum, self.momentum, update)


class GHMCLoss(_GradientHarmonizing):
    """GHM-C: g = |σ(x) − y| (no gradient), `bins` equal bins on [0, 1] (last edge 1 + 1e-6),
    β_i = N / (EMA count of the bin) / (number of non-empty bins), loss = Σ β·BCE / N over the N
    valid elements (all M·K entries the criterion passes: one FPN level's with `per_level`).

    Self-normalising: divides by N, not by the criterion's positive count (which it ignores).
    Defaults bins = 30, momentum = 0.75 (the official config), per_level = True (the official code).
    """

    def __init__(self, bins: int = 30, momentum: float = 0.75, per_level: bool = True):
        super().__init__(bins, momentum, last_edge=1.0 + 1e-6, per_level=per_level)

    def elementwise(self, logits: Tensor, targets: Tensor, update: bool = False) -> Tensor:
        """β·BCE per element; the count EMA advances only with `update` (the forward pass does)."""
        weights = self.weights((torch.sigmoid(logits.detach()) - targets).abs(), update)
        return F.binary_cross_entropy_with_logits(logits, targets, weights.to(logits.dtype), reduction="none")

    def forward(self, logits: Tensor, targets: Tensor, normalizer: Tensor | float | None = None) -> Tensor:
        return summed_with_gradient(logits, targets, self._value_and_gradient, in_blocks=False) / max(logits.numel(), 1)

    def _value_and_gradient(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Σ β·BCE and its gradient β (σ(x) − y); advances the count EMA."""
        gradient = torch.sigmoid(logits).sub_(targets)
        weights = self.weights(gradient.abs(), update=True).to(logits.dtype)
        ce = log1p_exp(logits * (1.0 - 2.0 * targets))  # BCE for y ∈ {0, 1}
        return ce.mul_(weights).sum(), gradient.mul_(weights)  # sum(), not dot(): its float32 accumulation drifts


class GHMRLoss(_GradientHarmonizing):
    """GHM-R on deltas: ASL1(d) = √(d² + μ²) − μ, g = |d| / √(d² + μ²) (no gradient), `bins`
    bins on [0, 1] (last edge 1e3), the same harmonizing weights as GHM-C, loss = Σ β·ASL1 / N
    over the N = 4·P coordinates (one FPN level's with `per_level`). Self-normalising like GHM-C.

    Defaults μ = 0.02, bins = 10, momentum = 0.7, per_level = True (the official config and code).
    The official config also weights this loss by 10 (criterion.box_weight=10) and clips the
    gradient norm at 35 (trainer.clip_grad_norm=35).
    """

    input_space = "deltas"

    def __init__(self, mu: float = 0.02, bins: int = 10, momentum: float = 0.7, per_level: bool = True):
        if mu <= 0:
            raise ValueError(f"mu must be > 0, got {mu}")
        super().__init__(bins, momentum, last_edge=1e3, per_level=per_level)
        self.mu = mu

    def forward(self, pred: Tensor, target: Tensor, normalizer: Tensor | float | None = None) -> Tensor:
        diff = pred - target
        root = torch.sqrt(diff * diff + self.mu * self.mu)
        weights = self.weights((diff / root).detach().abs())
        return ((root - self.mu) * weights.to(diff.dtype)).sum() / max(diff.numel(), 1)
