"""Classification losses over anchors × classes (sigmoid, one-vs-all).

Interface: forward(logits [M, K], targets [M, K] one-hot floats, normalizer) → scalar,
where M are the non-ignored anchors; the sum over all M·K terms is divided by `normalizer`
(the number of positive anchors). Losses that are such a sum also expose the terms,
`elementwise(logits, targets)` → [M, K], which the gradient diagnostics read (and the tests
differentiate with autograd); their forward computes the sum and its gradient in one pass
(`summed_with_gradient`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detector.losses.fused import log1p_exp, summed_with_gradient


def check_alpha(alpha: float | None) -> None:
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (or null for no balancing), got {alpha}")


def check_gamma(gamma: float) -> None:
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")


def alpha_weight(targets: Tensor, alpha: float | None) -> Tensor | float:
    """α_t = α for positives (y = 1), 1 − α for negatives; 1 when α is None."""
    if alpha is None:
        return 1.0
    return targets * alpha + (1.0 - targets) * (1.0 - alpha)


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float | None = 0.25, gamma: float = 2.0) -> Tensor:
    """Element-wise FL(p_t) = −α_t (1 − p_t)^γ log(p_t), p_t = p if y = 1 else 1 − p, p = σ(x)."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    one_minus_p_t = p + targets - 2.0 * p * targets  # 1 − p_t, exact for y ∈ {0, 1}
    loss = ce if gamma == 0 else ce * one_minus_p_t.pow(gamma)
    return loss * alpha_weight(targets, alpha)


def focal_value_and_gradient(
    logits: Tensor, targets: Tensor, alpha: float | None, gamma: float
) -> tuple[Tensor, Tensor]:
    """Σ FL and ∂FL/∂x = α_t (1 − p_t)^γ [(p − y) − γ (2y − 1) p_t (−log p_t)] (Appendix B's
    gradient written with p − y), in a few element-wise passes and no autograd graph, for y ∈ {0, 1}."""
    sign = targets * 2.0 - 1.0  # y as ±1
    ce = log1p_exp(logits * sign.neg())  # −log p_t
    gradient = torch.sigmoid(logits).sub_(targets)  # p − y: the gradient of CE
    loss = ce
    if gamma != 0:
        one_minus_p_t = gradient.abs()
        modulator = one_minus_p_t.square() if gamma == 2 else one_minus_p_t.pow(gamma)
        correction = one_minus_p_t.neg_().add_(1).mul_(ce).mul_(sign).mul_(gamma)
        gradient = gradient.sub_(correction).mul_(modulator)
        loss = ce.mul_(modulator)
    if alpha is not None:
        alpha_t = alpha_weight(targets, alpha)
        loss, gradient = loss.mul_(alpha_t), gradient.mul_(alpha_t)
    return loss.sum(), gradient


class FocalLoss(nn.Module):
    """Focal Loss (Lin et al., ICCV 2017, eq. 5): FL(p_t) = −α_t (1 − p_t)^γ log(p_t).

    Defaults α = 0.25, γ = 2 (the paper's best, Table 1b). γ = 0 with α = None is plain sigmoid
    cross-entropy. Returns Σ FL / normalizer.
    """

    def __init__(self, alpha: float | None = 0.25, gamma: float = 2.0):
        super().__init__()
        check_alpha(alpha)
        check_gamma(gamma)
        self.alpha = alpha
        self.gamma = gamma

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:
        return sigmoid_focal_loss(logits, targets, self.alpha, self.gamma)

    def forward(self, logits: Tensor, targets: Tensor, normalizer: Tensor | float) -> Tensor:
        return summed_with_gradient(logits, targets, self._value_and_gradient) / normalizer

    def _value_and_gradient(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        return focal_value_and_gradient(logits, targets, self.alpha, self.gamma)


class SigmoidCrossEntropyLoss(nn.Module):
    """Sigmoid cross-entropy, optionally α-balanced: CE = −α_t log(p_t) (FL paper, eq. 2–3).

    α = None is plain CE (`loss=ce`); α weights positives and 1 − α negatives
    (`loss=balanced_ce`, default α = 0.75, the best CE row of the paper's Table 1a).
    Plain CE needs the π-prior: without it training diverges (the paper, §4.1).
    """

    def __init__(self, alpha: float | None = None):
        super().__init__()
        check_alpha(alpha)
        self.alpha = alpha

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:
        return sigmoid_focal_loss(logits, targets, self.alpha, 0.0)

    def forward(self, logits: Tensor, targets: Tensor, normalizer: Tensor | float) -> Tensor:
        return summed_with_gradient(logits, targets, self._value_and_gradient) / normalizer

    def _value_and_gradient(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        return focal_value_and_gradient(logits, targets, self.alpha, 0.0)


class FocalStarLoss(nn.Module):
    """FL* (FL paper, Appendix A): x_t = y·x with y ∈ {±1}, p*_t = σ(γ·x_t + β),
    FL* = −α_t log(p*_t) / γ, whose gradient is dFL*/dx = α_t · y (p*_t − 1) (Appendix B).

    Defaults γ = 2, β = 1, α = 0.25 (Table 3: 33.8 AP; γ = 4, β = 0 gives 33.9). Unlike fvcore's
    `sigmoid_focal_loss_star`, β is a parameter here. γ must be > 0.
    """

    def __init__(self, gamma: float = 2.0, beta: float = 1.0, alpha: float | None = 0.25):
        super().__init__()
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0 for FL* (it divides the loss), got {gamma}")
        check_alpha(alpha)
        self.gamma, self.beta, self.alpha = gamma, beta, alpha

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:
        signed = logits * (2.0 * targets - 1.0)  # x_t
        return -F.logsigmoid(self.gamma * signed + self.beta) / self.gamma * alpha_weight(targets, self.alpha)

    def forward(self, logits: Tensor, targets: Tensor, normalizer: Tensor | float) -> Tensor:
        return summed_with_gradient(logits, targets, self._value_and_gradient) / normalizer

    def _value_and_gradient(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """With z = γ x_t + β: FL* = −log σ(z)/γ and ∂FL*/∂x = −α_t y σ(−z), y ∈ {±1}."""
        sign = targets * 2.0 - 1.0
        z = (logits * sign).mul_(self.gamma).add_(self.beta)
        loss = log1p_exp(z.neg()).div_(self.gamma)
        gradient = torch.sigmoid(z.neg_()).mul_(sign).neg_()
        if self.alpha is not None:
            alpha_t = alpha_weight(targets, self.alpha)
            loss, gradient = loss.mul_(alpha_t), gradient.mul_(alpha_t)
        return loss.sum(), gradient


class Poly1Loss(nn.Module):
    """Poly-1 (Leng et al., PolyLoss, ICLR 2022): the focal loss plus ε times the next term of its
    Taylor expansion in (1 − p_t), Poly-1 = FL + ε (1 − p_t)^(γ+1), the poly term not α-weighted
    (the paper's code). γ = 0 with α = None is Poly-1 cross-entropy, CE + ε (1 − p_t).

    Defaults α = 0.25, γ = 2, ε = 1. ε < 0 is allowed (the paper tunes ε in [−1, 1] and beyond);
    ε ≥ −1 keeps the Poly-1 CE bounded below. Returns Σ Poly-1 / normalizer.
    """

    def __init__(self, alpha: float | None = 0.25, gamma: float = 2.0, epsilon: float = 1.0):
        super().__init__()
        check_alpha(alpha)
        check_gamma(gamma)
        self.alpha, self.gamma, self.epsilon = alpha, gamma, epsilon

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:
        one_minus_p_t = (torch.sigmoid(logits) - targets).abs()
        poly = one_minus_p_t.pow(self.gamma + 1)
        return sigmoid_focal_loss(logits, targets, self.alpha, self.gamma) + self.epsilon * poly

    def forward(self, logits: Tensor, targets: Tensor, normalizer: Tensor | float) -> Tensor:
        return summed_with_gradient(logits, targets, self._value_and_gradient) / normalizer

    def _value_and_gradient(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """FL's value and gradient, plus ε (1 − p_t)^(γ+1) and its gradient −ε (γ+1) y± p_t (1 − p_t)^(γ+1),
        y± = 2y − 1 (from dp_t/dx = y± p_t (1 − p_t)), for y ∈ {0, 1}."""
        value, gradient = focal_value_and_gradient(logits, targets, self.alpha, self.gamma)
        one_minus_p_t = torch.sigmoid(logits).sub_(targets).abs_()
        poly = one_minus_p_t.pow(self.gamma + 1)
        sign = targets * 2.0 - 1.0
        poly_gradient = poly * one_minus_p_t.neg().add_(1).mul_(sign).mul_(-self.epsilon * (self.gamma + 1))
        return value + self.epsilon * poly.sum(), gradient.add_(poly_gradient)
