"""Where the classification and box gradients go: the GHM paper's gradient-density view (§3,
Fig. 1; §4 for regression) and the FL paper's easy-negative argument (§3, §5).

Each element (anchor, class) of the classification loss is a binary example with logit x,
p = σ(x) and target y. Its gradient norm under cross-entropy is g = |p − y| (GHM eq. 3).
Every loss here is a function of the same logits, so the picture compares them directly:
the density of g for positive (y = 1) and negative elements, how the loss's own gradient
|∂L/∂x| is spread over g, and the share of loss and gradient spent on easy negatives
(y = 0 and p < 0.1) — most of CE's, little of FL's or GHM-C's.

The box loss of a positive anchor sees four residuals d = t̂ − t (predicted minus target deltas).
Its gradient-norm axis is GHM-R's, g_r = |d| / √(d² + μ²) with GHM-R's default μ = 0.02 (GHM §4),
the gradient norm of ASL1: near 0 for a precise coordinate, near 1 for any residual well above μ.
μ stays 0.02 whatever a run's loss uses, so that every run is drawn on the same axis. The picture
holds the density of g_r over the positives' coordinates and how the box loss's own gradient
|∂L/∂t̂| is spread over it, for every loss on deltas (Smooth L1, ASL1, GHM-R, …).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

EASY_NEGATIVE_P = 0.1
ASL1_MU = 0.02


@dataclass
class Histogram:
    """Weighted counts over `bins` equal bins of g on [0, 1], with the moments TensorBoard stores."""

    counts: Tensor  # (bins,)
    total: float
    min: float
    max: float
    sum: float
    sum_squares: float

    @classmethod
    def of(cls, g: Tensor, bins: int, weights: Tensor | None = None) -> Histogram:
        weights = torch.ones_like(g) if weights is None else weights
        index = (g * bins).long().clamp(0, bins - 1)  # bin i holds i/bins ≤ g < (i+1)/bins, g = 1 in the last
        counts = torch.bincount(index, weights=weights, minlength=bins)
        empty = g.numel() == 0
        return cls(
            counts.cpu(),
            float(weights.sum()),
            0.0 if empty else float(g.min()),
            0.0 if empty else float(g.max()),
            float((weights * g).sum()),
            float((weights * g * g).sum()),
        )

    def bucket_limits(self) -> list[float]:
        bins = len(self.counts)
        return [(i + 1) / bins for i in range(bins)]


@dataclass
class GradientStatistics:
    g_positive: Histogram  # element counts of positives by g
    g_negative: Histogram  # element counts of negatives by g
    gradient_by_g: Histogram  # Σ |∂L/∂x| of all elements by g
    scalars: dict[str, float]  # easy_negative_fraction, _gradient_share and (sum losses only) _loss_share


@dataclass
class BoxGradientStatistics:
    g: Histogram  # coordinate counts of the positives by g_r
    gradient_by_g: Histogram  # Σ |∂L/∂t̂| of the coordinates by g_r
    scalars: dict[str, float]  # box_mean_abs_residual: the mean |d|


@contextmanager
def loss_inputs(loss: nn.Module, enabled: bool = True) -> Iterator[list[tuple[Tensor, Tensor]]]:
    """While open (and `enabled`), records the (inputs, targets) of every call of `loss`: one call,
    or one per level for a `per_level` loss. The criterion returns losses only; this is how the
    diagnostics see what it passed to the loss."""
    calls: list[tuple[Tensor, Tensor]] = []
    handle = loss.register_forward_hook(lambda module, args, output: calls.append(args[:2])) if enabled else None
    try:
        yield calls
    finally:
        if handle is not None:
            handle.remove()


def gradient_statistics(
    loss_cls: Tensor,
    logits: Tensor | Sequence[Tensor],
    targets: Tensor | Sequence[Tensor],
    cls_loss: nn.Module,
    bins: int = 50,
) -> GradientStatistics:
    """Statistics of one batch; `logits` ([M, K], in the graph of `loss_cls`, or the chunks of one
    call per level) and `targets` are what the criterion passed to `cls_loss`. The graph is kept for
    the training step's backward.

    The loss share needs the loss's per-element terms (`cls_loss.elementwise`); losses that are
    not one sum over these elements (OHEM, Dice, a `per_level` GHM-C) report the gradient share only.
    """
    chunks = [logits] if isinstance(logits, Tensor) else list(logits)
    gradient = torch.cat(torch.autograd.grad(loss_cls, chunks, retain_graph=True))
    logits = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
    targets = targets if isinstance(targets, Tensor) else torch.cat(list(targets))
    with torch.no_grad():
        p = torch.sigmoid(logits.detach())
        g = (p - targets).abs().flatten()
        negative = (targets == 0).flatten()
        easy = negative & (p.flatten() < EASY_NEGATIVE_P)
        magnitude = gradient.abs().flatten()
        scalars = {
            "easy_negative_fraction": int(easy.sum()) / max(easy.numel(), 1),
            "easy_negative_gradient_share": _share(magnitude, easy),
        }
        elementwise = getattr(cls_loss, "elementwise", None)
        if elementwise is not None and not getattr(cls_loss, "per_level", False):
            scalars["easy_negative_loss_share"] = _share(elementwise(logits.detach(), targets).flatten(), easy)
        return GradientStatistics(
            Histogram.of(g[~negative], bins),
            Histogram.of(g[negative], bins),
            Histogram.of(g, bins, weights=magnitude),
            scalars,
        )


def box_gradient_statistics(
    loss_box: Tensor,
    predictions: Tensor | Sequence[Tensor],
    targets: Tensor | Sequence[Tensor],
    bins: int = 50,
) -> BoxGradientStatistics | None:
    """Statistics of one batch's positives; `predictions` ([P, 4] deltas, in the graph of `loss_box`,
    or the chunks of one call per level) and `targets` are what the criterion passed to a box loss
    on deltas. The graph is kept for the training step's backward. None for a batch without
    positives: it has no residuals to show."""
    chunks = [predictions] if isinstance(predictions, Tensor) else list(predictions)
    if sum(c.numel() for c in chunks) == 0:
        return None
    found = (
        torch.autograd.grad(loss_box, chunks, retain_graph=True, allow_unused=True)
        if loss_box.requires_grad
        else [None] * len(chunks)
    )
    gradient = torch.cat([torch.zeros_like(c) if g is None else g for c, g in zip(chunks, found)])
    predictions = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
    targets = targets if isinstance(targets, Tensor) else torch.cat(list(targets))
    with torch.no_grad():
        residual = (predictions.detach() - targets).abs().flatten()
        g = residual / torch.hypot(residual, residual.new_tensor(ASL1_MU))  # hypot: no overflow for a huge |d|
        return BoxGradientStatistics(
            Histogram.of(g, bins),
            Histogram.of(g, bins, weights=gradient.abs().flatten()),
            {"box_mean_abs_residual": float(residual.mean())},
        )


def _share(values: Tensor, subset: Tensor) -> float:
    total = values.sum()
    return float(values[subset].sum() / total) if total > 0 else 0.0
