"""The trainer's loop runs its hooks in order, around each real step."""

from types import SimpleNamespace

import pytest
import torch

from detector.cli import build
from detector.engine.diagnostics import box_gradient_statistics, gradient_statistics
from detector.engine.evaluator import STAT_NAMES
from detector.engine.hooks import Evaluation, GradientDiagnostics, Hook, LastCheckpoint, LossLog, TimeBudget
from detector.engine.optimizer import build_optimizer
from detector.engine.schedule import lambda_scheduler
from detector.engine.settings import TrainerSettings
from detector.engine.trainer import Trainer
from detector.losses import FocalLoss, SmoothL1Loss


class Recorder(Hook):
    """Appends what it sees after the trainer's own hooks have run at the same point."""

    def __init__(self, events, last):
        self.events, self.last = events, last

    def before_train(self, trainer):
        self.events.append("before_train")

    def before_step(self, trainer):
        self.events.append(("before_step", trainer.iteration, trainer.diagnose))

    def after_step(self, trainer, losses):
        saved = torch.load(self.last, weights_only=True)["iteration"] if self.last.exists() else None
        self.events.append(("after_step", trainer.iteration, "gradients" in losses, saved))

    def after_train(self, trainer):
        self.events.append("after_train")


class FakeValidator:
    def __init__(self, trainer_box, events):
        self.trainer_box, self.events = trainer_box, events

    def __call__(self, model):
        iteration = self.trainer_box[0].iteration
        self.events.append(("validate", iteration))
        return {name: float(iteration) for name in STAT_NAMES}, "table", []


@pytest.mark.parametrize("eval_period", [2, 0])
def test_the_hooks_run_in_order_around_each_step(smoke_trainer, tmp_path, eval_period):
    events, box = [], []
    trainer = smoke_trainer(
        validator=FakeValidator(box, events),
        hooks=[Recorder(events, tmp_path / "checkpoints" / "last.pt")],
        max_iters=3,
        eval_period=eval_period,
        log_period=1,
        checkpoint_period=2,
        diagnostics_period=2,
    )
    box.append(trainer)
    assert [type(hook) for hook in trainer.hooks] == [
        GradientDiagnostics,
        LossLog,
        Evaluation,
        LastCheckpoint,
        Recorder,
    ]
    metrics = trainer.train()
    periodic = eval_period > 0
    assert events == [
        "before_train",
        ("before_step", 0, False),
        ("after_step", 1, False, None),
        ("before_step", 1, True),  # iteration 2 computes the gradient statistics…
        *([("validate", 2)] if periodic else []),
        ("after_step", 2, False, 2),  # …which the diagnostics hook took before the recorder saw the losses
        ("before_step", 2, True),  # the last iteration is always due
        *([("validate", 3)] if periodic else []),  # after the last step when it is due…
        ("after_step", 3, False, 3),
        *([] if periodic else [("validate", 3)]),  # …or at the end
        "after_train",
    ]
    assert metrics["AP"] == 3.0 and metrics["status"] == "finished"


def test_a_time_budget_hook_comes_first(compose_cfg, cache_dir, tmp_path):
    cfg = compose_cfg(["debug=smoke", f"data.cache_dir={cache_dir}"])
    model, criterion, _ = build(cfg, 6)
    optimizer = build_optimizer(cfg.optim, model)
    trainer = Trainer(
        model,
        criterion,
        optimizer,
        lambda_scheduler(optimizer, lambda it: 1.0),
        lambda start: iter(()),
        validator=None,
        output_dir=tmp_path,
        settings=TrainerSettings(max_iters=10, time_budget=5.0, budget_probe_iters=4),
        batch_size=2,
        device=torch.device("cpu"),
    )
    assert [type(hook) for hook in trainer.hooks] == [TimeBudget, GradientDiagnostics, LossLog, LastCheckpoint]


class RecordingWriter:
    def __init__(self):
        self.histograms, self.scalars = {}, {}

    def add_histogram_raw(self, tag, min, max, num, sum, sum_squares, bucket_limits, bucket_counts, global_step):
        self.histograms[tag] = (num, bucket_counts, global_step)

    def add_scalar(self, tag, value, global_step):
        self.scalars[tag] = (value, global_step)


def test_gradient_diagnostics_write_the_classification_and_box_pictures_and_take_them_out_of_the_losses():
    logits = torch.tensor([[-3.0, 0.5], [2.0, -1.0]], requires_grad=True)
    cls_targets = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    deltas = torch.tensor([[0.01, -0.3, 0.0, 2.0]], requires_grad=True)
    box_targets = torch.zeros(1, 4)
    losses = {
        "loss": 1.0,
        "gradients": gradient_statistics(FocalLoss()(logits, cls_targets, 1.0), logits, cls_targets, FocalLoss()),
        "box_gradients": box_gradient_statistics(SmoothL1Loss()(deltas, box_targets, 1.0), deltas, box_targets),
    }
    writer = RecordingWriter()
    GradientDiagnostics(period=1).after_step(SimpleNamespace(writer=writer, iteration=7), losses)
    assert losses == {"loss": 1.0}  # the statistics do not reach the loss log
    assert set(writer.histograms) == {
        f"gradients/{name}" for name in ("g_positive", "g_negative", "gradient_by_g", "box_g", "box_gradient_by_g")
    }
    num, counts, step = writer.histograms["gradients/box_g"]
    assert (num, sum(counts), step) == (4, 4, 7)
    assert writer.scalars["gradients/box_mean_abs_residual"] == (pytest.approx((0.01 + 0.3 + 0.0 + 2.0) / 4), 7)
    assert {"gradients/easy_negative_fraction", "gradients/easy_negative_gradient_share"} <= set(writer.scalars)


def test_the_loss_log_writes_the_gradient_norm_and_a_dash_after_a_skipped_step(caplog):
    writer = RecordingWriter()
    losses = {"loss": 2.0, "loss_cls": 1.5, "loss_box": 0.5, "num_pos": 4.0, "num_neg": 40000.0}
    trainer = SimpleNamespace(
        writer=writer,
        iteration=20,
        max_iters=100,
        train_seconds=10.0,
        grad_norm=torch.tensor(37.25),
        optimizer=SimpleNamespace(param_groups=[{"lr": 0.01}]),
    )
    with caplog.at_level("INFO", logger="detector.engine.trainer"):
        LossLog(period=20).after_step(trainer, losses)
        trainer.grad_norm = None  # the step was skipped: its loss was not finite
        trainer.iteration = 40
        LossLog(period=20).after_step(trainer, losses)
    first, second = [r.getMessage() for r in caplog.records]
    assert "cls 1.5000  box 0.5000  pos 4.0  neg/pos 10000  lr 0.01000  grad 37.2  0.500s/it" in first
    assert "grad -  0.250s/it" in second
    assert writer.scalars["train/grad_norm"] == (pytest.approx(37.25), 20)  # the skipped step writes none
    assert writer.scalars["train/loss_cls"] == (1.5, 40)
