"""Learning-rate schedules: linear warmup, then step decay or cosine, as `LambdaLR` factors."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.optim.lr_scheduler import LambdaLR


class WarmupMultiStep:
    """Factor of the base LR at iteration t: warmup ramps linearly from `warmup_factor` to 1 over
    `warmup_iters`; then ×`gamma` at each milestone. Milestones are fractions of max_iters
    (the FL paper: 60k and 80k of 90k, i.e. 0.666667 and 0.888889), so a schedule keeps its shape
    when `trainer.max_iters` changes, or when a time budget sets it (`max_iters` may be reassigned)."""

    def __init__(
        self,
        max_iters: int,
        milestones: Sequence[float] = (0.666667, 0.888889),
        gamma: float = 0.1,
        warmup_iters: int = 500,
        warmup_factor: float = 0.001,
    ):
        if any(not 0 < m < 1 for m in milestones) or list(milestones) != sorted(milestones):
            raise ValueError(f"schedule.milestones must be increasing fractions in (0, 1), got {list(milestones)}")
        _check_warmup(warmup_iters, warmup_factor)
        self.max_iters, self.milestones = max_iters, list(milestones)
        self.gamma, self.warmup_iters, self.warmup_factor = gamma, warmup_iters, warmup_factor

    @property
    def steps(self) -> list[int]:
        """The iterations at which the LR drops."""
        return [round(m * self.max_iters) for m in self.milestones]

    def __call__(self, iteration: int) -> float:
        decay = self.gamma ** sum(iteration >= step for step in self.steps)
        return decay * _warmup(iteration, self.warmup_iters, self.warmup_factor)


class WarmupCosine:
    """Linear warmup over `warmup_iters`, then cosine decay from 1 at the end of warmup to
    `final_factor` at max_iters:
        f(t) = final + (1 − final) · ½ (1 + cos(π · (t − W) / (max_iters − W)))   for t ≥ W.
    During warmup the factor does not depend on max_iters, so a time budget can set max_iters
    then and a rerun with that count is identical."""

    def __init__(
        self, max_iters: int, warmup_iters: int = 500, warmup_factor: float = 0.001, final_factor: float = 0.0
    ):
        _check_warmup(warmup_iters, warmup_factor)
        self.max_iters, self.warmup_iters, self.warmup_factor = max_iters, warmup_iters, warmup_factor
        self.final_factor = final_factor

    def __call__(self, iteration: int) -> float:
        if iteration < self.warmup_iters:
            return _warmup(iteration, self.warmup_iters, self.warmup_factor)
        progress = min(1.0, (iteration - self.warmup_iters) / max(1, self.max_iters - self.warmup_iters))
        return self.final_factor + (1 - self.final_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def _check_warmup(warmup_iters: int, warmup_factor: float) -> None:
    if warmup_iters < 0 or not 0 < warmup_factor <= 1:
        raise ValueError(
            f"schedule needs warmup_iters >= 0 and warmup_factor in (0, 1], got {warmup_iters}, {warmup_factor}"
        )


def _warmup(iteration: int, warmup_iters: int, warmup_factor: float) -> float:
    if iteration >= warmup_iters:
        return 1.0
    alpha = iteration / warmup_iters
    return warmup_factor * (1 - alpha) + alpha


def lambda_scheduler(optimizer: torch.optim.Optimizer, factor) -> LambdaLR:
    return LambdaLR(optimizer, factor)
