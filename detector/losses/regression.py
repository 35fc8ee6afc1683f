"""Box regression losses on R-CNN deltas.

Interface: forward(pred [P, 4], target [P, 4], normalizer) → scalar over the P positive anchors,
Σ / normalizer. The class attribute `input_space` tells the criterion what to pass:
"deltas" (encoded against the anchor) or "xyxy" (decoded boxes in pixels).
"""

from __future__ import annotations

import math

import torch
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


class L1Loss(nn.Module):
    """L1 on deltas: Σ |d| (Smooth L1 with β = 0)."""

    input_space = "deltas"

    def forward(self, pred: Tensor, target: Tensor, normalizer: Tensor | float) -> Tensor:
        return (pred - target).abs().sum() / normalizer


class L2Loss(nn.Module):
    """Squared error on deltas: Σ d² (the MSE numerator; R-CNN's original box loss)."""

    input_space = "deltas"

    def forward(self, pred: Tensor, target: Tensor, normalizer: Tensor | float) -> Tensor:
        return (pred - target).pow(2).sum() / normalizer


class HuberLoss(nn.Module):
    """Huber (1964) on deltas: 0.5·d² if |d| ≤ δ else δ(|d| − 0.5·δ); equals δ × Smooth L1(β = δ).
    Default δ = 1."""

    input_space = "deltas"

    def __init__(self, delta: float = 1.0):
        super().__init__()
        if delta <= 0:
            raise ValueError(f"delta must be > 0, got {delta}")
        self.delta = delta

    def forward(self, pred: Tensor, target: Tensor, normalizer: Tensor | float) -> Tensor:
        return F.huber_loss(pred, target, delta=self.delta, reduction="sum") / normalizer


class BalancedL1Loss(nn.Module):
    """Balanced L1 (Pang et al., Libra R-CNN, CVPR 2019, eq. 8) on deltas, with b = e^(γ/α) − 1:
    α/b·(b|d| + 1)·ln(b|d|/β + 1) − α|d| if |d| < β, else γ|d| + γ/b − αβ.
    Defaults α = 0.5, γ = 1.5, β = 1 (the paper's)."""

    input_space = "deltas"

    def __init__(self, alpha: float = 0.5, gamma: float = 1.5, beta: float = 1.0):
        super().__init__()
        if alpha <= 0 or gamma <= 0 or beta <= 0:
            raise ValueError(f"alpha, gamma and beta must be > 0, got {alpha}, {gamma}, {beta}")
        self.alpha, self.gamma, self.beta = alpha, gamma, beta
        self.b = math.exp(gamma / alpha) - 1

    def forward(self, pred: Tensor, target: Tensor, normalizer: Tensor | float) -> Tensor:
        d = (pred - target).abs()
        a, g, beta, b = self.alpha, self.gamma, self.beta, self.b
        inner = a / b * (b * d + 1) * torch.log(b * d / beta + 1) - a * d
        outer = g * d + g / b - a * beta
        return torch.where(d < beta, inner, outer).sum() / normalizer
