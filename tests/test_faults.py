"""Faults during training: a non-finite loss skips its step; K in a row stop with a clear error."""

import json
import logging

import pytest
import torch

from detector.engine.checkpoint import load_checkpoint


class NaNAt(torch.nn.Module):
    """The real criterion, with a NaN classification loss at the given (1-based) calls."""

    def __init__(self, criterion, bad_calls):
        super().__init__()
        self.inner, self.bad_calls, self.calls = criterion, set(bad_calls), 0
        self.cls_loss = criterion.cls_loss

    def forward(self, outputs, targets):
        self.calls += 1
        terms = self.inner(outputs, targets)
        if self.calls in self.bad_calls:
            terms["loss_cls"] = terms["loss_cls"] * float("nan")
        return terms


@pytest.fixture
def make_trainer(smoke_trainer):
    def make(bad_calls, **settings):
        return smoke_trainer(wrap_criterion=lambda criterion: NaNAt(criterion, bad_calls), **settings)

    return make


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_a_nan_loss_skips_its_step_and_training_goes_on(make_trainer, caplog):
    trainer = make_trainer({3}, max_iters=5)
    trainer.model.train()
    trainer.step(), trainer.step()
    before = snapshot(trainer.model)
    with caplog.at_level(logging.ERROR):
        losses = trainer.step()
    assert losses["loss"] != losses["loss"]  # NaN reported
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert "non-finite loss at iteration 1 (loss_cls)" in caplog.text  # iteration counts in train(); here 0
    trainer.step()
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert trainer.skipped_steps == 1 and trainer.nonfinite_in_a_row == 0


def test_k_nans_in_a_row_stop_with_the_documented_message_and_a_good_checkpoint(make_trainer, tmp_path):
    trainer = make_trainer({3, 4}, max_iters=8, checkpoint_period=1, max_consecutive_nonfinite=2)
    with pytest.raises(
        FloatingPointError,
        match=r"non-finite loss for 2 iterations in a row "
        r"\(trainer.max_consecutive_nonfinite=2\), the last at iteration 4 "
        r"in loss_cls; training stopped",
    ):
        trainer.train()
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["iteration"] == 3 and state["skipped_steps"] == 1  # written after the first skip, weights intact
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    metrics = json.loads((tmp_path / "metrics.json").read_text())  # the run's status, for scripts to read
    assert metrics["status"] == "diverged" and metrics["iteration"] == 3 and metrics["skipped_steps"] == 2
    assert "non-finite loss for 2 iterations in a row" in metrics["error"] and "AP" not in metrics
    again = make_trainer(set(), max_iters=8)  # a sweep rerun with trainer.resume=auto: stops again, untrained
    again.resume(tmp_path / "checkpoints" / "last.pt")
    with pytest.raises(FloatingPointError, match="this run diverged at iteration 3 .* delete its metrics.json"):
        again.train()
    assert again.iteration == 3
