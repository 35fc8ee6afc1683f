"""The training loop's settings: the `trainer/` config group, instantiated by `detector.cli`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainerSettings:
    """What `Trainer` does around its steps; each field is the `trainer.` key of its name
    (configs/trainer/default.yaml says what each means). Defaults: no evaluation, no periodic
    checkpoint, no gradient diagnostics, losses logged every 20 iterations, no clipping, 5
    non-finite steps in a row stop training, no time budget. A value out of range raises
    ValueError naming its key."""

    max_iters: int
    eval_period: int = 0
    log_period: int = 20
    checkpoint_period: int = 0
    diagnostics_period: int = 0
    clip_grad_norm: float | None = None
    max_consecutive_nonfinite: int = 5
    channels_last: bool = False
    sync_bn: bool = False
    compile: bool = False
    time_budget: float | None = None
    budget_probe_iters: int = 20

    def __post_init__(self) -> None:
        if self.max_iters < 1:
            raise ValueError(f"trainer.max_iters must be >= 1, got {self.max_iters}")
        if self.time_budget is not None and self.time_budget <= 0:
            raise ValueError(f"trainer.time_budget must be > 0 seconds or null, got {self.time_budget}")
        if self.time_budget is not None and self.budget_probe_iters < 1:  # >= max_iters: ends before the budget acts
            raise ValueError(f"trainer.budget_probe_iters must be >= 1, got {self.budget_probe_iters}")
        if self.max_consecutive_nonfinite < 1:
            raise ValueError(f"trainer.max_consecutive_nonfinite must be >= 1, got {self.max_consecutive_nonfinite}")
        for name in ("eval_period", "log_period", "checkpoint_period", "diagnostics_period"):
            if getattr(self, name) < 0:
                raise ValueError(f"trainer.{name} must be >= 0 (0 turns it off), got {getattr(self, name)}")
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            raise ValueError(f"trainer.clip_grad_norm must be > 0 or null, got {self.clip_grad_norm}")
