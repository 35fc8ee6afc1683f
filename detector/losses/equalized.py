"""Equalized Focal Loss (Li et al., "Equalized Focal Loss for Dense Long-Tailed Object Detection",
CVPR 2022): a focal loss whose focusing power grows for the classes whose positives get little of
their gradient.

  EFL_j(p_t) = −α_t · (γ_j / γ_b) · (1 − p_t)^γ_j · log p_t,   γ_j = γ_b + s · (1 − g_j),

with g_j = clamp(Σ|∂L/∂x| over class j's positive elements / Σ|∂L/∂x| over its negative ones, 0, 1),
the gradients accumulated over all past training steps (both γ_j and the weight without gradient).
Defaults γ_b = 2, s = 8, α = 0.25 (the paper's). g starts at 1 (EFL is then FL) and is advanced after
each training step's loss, with that step's gradients divided by its normalizer, as the official
code (ModelTC/EOD) collects them from the logits' gradient; a class whose sums turn non-finite (a
step the trainer skips) keeps its state. The accumulators are buffers, sized to the number of
classes on the first call and saved in checkpoints; under DDP each process keeps its own (the
official code sums them over processes).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detector.losses.classification import alpha_weight, check_alpha, check_gamma
from detector.losses.fused import log1p_exp, summed_with_gradient


class EqualizedFocalLoss(nn.Module):
    def __init__(self, alpha: float | None = 0.25, gamma: float = 2.0, scale: float = 8.0):
        super().__init__()
        check_alpha(alpha)
        check_gamma(gamma)
        if gamma == 0:
            raise ValueError("gamma must be > 0 for EFL (its weight is gamma_j / gamma), got 0")
        if scale < 0:
            raise ValueError(f"scale must be >= 0, got {scale}")
        self.alpha, self.gamma, self.scale = alpha, gamma, scale
        for name in ("pos_grad", "neg_grad", "pos_neg"):
            self.register_buffer(name, torch.zeros(0, dtype=torch.float64))
        self.register_load_state_dict_pre_hook(self._size_to_checkpoint)

    def class_gammas(self) -> Tensor:
        """γ_j = γ_b + s (1 − g_j) for the classes seen so far."""
        return self.gamma + self.scale * (1 - self.pos_neg)

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:
        """The terms of the last state (no update)."""
        self._size(logits.shape[1], logits.device)
        return self._value_and_gradient(logits, targets, self.class_gammas().to(logits.dtype), terms=True)

    def forward(self, logits: Tensor, targets: Tensor, normalizer: Tensor | float) -> Tensor:
        self._size(logits.shape[1], logits.device)
        gammas = self.class_gammas().to(logits.dtype)
        sums: list[tuple[Tensor, Tensor]] = []

        def value_and_gradient(block: Tensor, block_targets: Tensor) -> tuple[Tensor, Tensor]:
            value, gradient = self._value_and_gradient(block, block_targets, gammas)
            magnitude = gradient.abs()
            sums.append(((magnitude * block_targets).sum(0), (magnitude * (1 - block_targets)).sum(0)))
            return value, gradient

        value = summed_with_gradient(logits, targets, value_and_gradient)
        if self.training and sums:
            scale = 1.0 / torch.as_tensor(normalizer, dtype=torch.float64, device=logits.device)
            pos = self.pos_grad + torch.stack([s[0] for s in sums]).sum(0).double() * scale
            neg = self.neg_grad + torch.stack([s[1] for s in sums]).sum(0).double() * scale
            finite = torch.isfinite(pos) & torch.isfinite(neg)  # a non-finite step leaves the state alone
            self.pos_grad.copy_(torch.where(finite, pos, self.pos_grad))
            self.neg_grad.copy_(torch.where(finite, neg, self.neg_grad))
            self.pos_neg.copy_((self.pos_grad / (self.neg_grad + 1e-10)).clamp(0.0, 1.0))
        return value / normalizer

    def _value_and_gradient(self, logits: Tensor, targets: Tensor, gammas: Tensor, terms: bool = False):
        """Σ EFL and ∂/∂x = α_t w_j (1 − p_t)^γ_j [(p − y) − γ_j (2y − 1) p_t (−log p_t)], w_j = γ_j/γ_b
        (the focal loss's gradient with its γ per class), for y ∈ {0, 1}."""
        sign = targets * 2.0 - 1.0
        ce = log1p_exp(logits * sign.neg())  # −log p_t
        p_minus_y = torch.sigmoid(logits) - targets
        one_minus_p_t = p_minus_y.abs()
        weight = alpha_weight(targets, self.alpha) * (gammas / self.gamma)
        modulator = one_minus_p_t.pow(gammas) * weight
        loss = ce * modulator
        if terms:
            return loss
        gradient = (p_minus_y - gammas * sign * (1 - one_minus_p_t) * ce) * modulator
        return loss.sum(), gradient

    def _size(self, num_classes: int, device: torch.device) -> None:
        if self.pos_neg.numel() == 0:
            self.pos_grad = torch.zeros(num_classes, dtype=torch.float64, device=device)
            self.neg_grad = torch.zeros(num_classes, dtype=torch.float64, device=device)
            self.pos_neg = torch.ones(num_classes, dtype=torch.float64, device=device)
        elif self.pos_neg.numel() != num_classes:
            raise ValueError(f"EqualizedFocalLoss has state for {self.pos_neg.numel()} classes, got {num_classes}")

    def _size_to_checkpoint(self, module, state_dict, prefix, *args) -> None:
        """A fresh loss (no classes seen yet) takes the checkpoint's class count before loading."""
        for name in ("pos_grad", "neg_grad", "pos_neg"):
            saved = state_dict.get(prefix + name)
            if saved is not None and getattr(self, name).shape != saved.shape:
                setattr(self, name, torch.zeros_like(saved, device=getattr(self, name).device))
