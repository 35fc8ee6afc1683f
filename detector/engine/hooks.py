"""What the training loop does around its steps, one hook each (after detectron2's `HookBase`).

`Trainer.train` calls every hook in the order it was given: `before_train`, then for each iteration
`before_step` and, once the step has run and the iteration counter advanced, `after_step(losses)`,
then `after_train` (not after an error). A hook reads and sets the trainer's state; what a resumed
run needs of it lives in the trainer's checkpoint.

The trainer's default order: the time budget (it may move the horizon that every later hook's
"at the end" means), gradient diagnostics, the loss log, evaluation (and `best.pt`), `last.pt`.
"""

from __future__ import annotations

import logging
import math
import time

from detector.engine.checkpoint import save_checkpoint
from detector.engine.distributed import broadcast_from_main
from detector.engine.errors import format_errors
from detector.engine.evaluator import STAT_NAMES, format_per_class
from detector.engine.pictures import error_figure, pr_curve_figure

log = logging.getLogger("detector.engine.trainer")


class Hook:
    def before_train(self, trainer) -> None:
        pass

    def before_step(self, trainer) -> None:
        pass

    def after_step(self, trainer, losses: dict) -> None:
        pass

    def after_train(self, trainer) -> None:
        pass


def due(trainer, period: int, iteration: int | None = None) -> bool:
    """Every `period` iterations (0: never) and at the last one."""
    iteration = trainer.iteration if iteration is None else iteration
    return period > 0 and (iteration % period == 0 or iteration == trainer.max_iters)


class TimeBudget(Hook):
    """With a `time_budget` (seconds of training steps), fix the iteration count after `probe_iters`
    iterations from the seconds per iteration over the last three quarters of them (the first warm
    up): N = min(max_iters, ⌊(budget − seconds so far) / seconds per iteration⌋ + iterations so far),
    and the schedule's horizon with it (rank 0's figure under DDP). The trainer keeps `budget_fixed`,
    `probe_start` and the fixed `max_iters` in its checkpoints."""

    def __init__(self, seconds: float, probe_iters: int):
        self.seconds, self.probe_iters = seconds, probe_iters

    def after_step(self, trainer, losses: dict) -> None:
        if trainer.budget_fixed:
            return
        if trainer.iteration == self.probe_iters // 4:
            trainer.probe_start = (trainer.iteration, trainer.train_seconds)
        if trainer.iteration == self.probe_iters:
            self.fit(trainer)

    def fit(self, trainer) -> None:
        start_iteration, start_seconds = trainer.probe_start or (0, 0.0)  # probe_iters < 4: all of it
        per_iteration = (trainer.train_seconds - start_seconds) / (trainer.iteration - start_iteration)
        left = max(0, math.floor((self.seconds - trainer.train_seconds) / per_iteration))
        fitted = first_horizon_keeping_the_past(trainer, min(trainer.max_iters, trainer.iteration + left))
        fitted = broadcast_from_main(fitted)  # every process stops together
        log.info(
            "trainer.time_budget=%gs at %.3fs/it (iterations %d-%d): %d iterations (upper bound %d); "
            "rerun exactly with trainer.max_iters=%d trainer.time_budget=null trainer.amp=%s",
            self.seconds,
            per_iteration,
            start_iteration + 1,
            trainer.iteration,
            fitted,
            trainer.max_iters,
            fitted,
            trainer.precision.amp,
        )
        trainer.budget_fixed = True
        trainer.set_horizon(fitted)


def first_horizon_keeping_the_past(trainer, horizon: int) -> int:
    """The smallest horizon from `horizon` up to max_iters under which every schedule factor gives the
    iterations already run the values they ran with (a multistep milestone must not move into the probe)."""
    factors = [f for f in trainer.scheduler.lr_lambdas if hasattr(f, "max_iters")]
    ran = [[f(t) for t in range(trainer.iteration + 1)] for f in factors]
    for candidate in range(horizon, trainer.max_iters):
        if all(_values_under(f, candidate, trainer.iteration) == values for f, values in zip(factors, ran)):
            return candidate
    return trainer.max_iters


def _values_under(factor, max_iters: int, iterations: int) -> list[float]:
    """`factor`'s values at 0…iterations with its horizon at `max_iters` (then put back)."""
    saved, factor.max_iters = factor.max_iters, max_iters
    try:
        return [factor(t) for t in range(iterations + 1)]
    finally:
        factor.max_iters = saved


class GradientDiagnostics(Hook):
    """Every `period` iterations, where the classification and box gradients go
    (`detector.engine.diagnostics`): the step computes them (`trainer.diagnose`), rank 0 sends them
    to TensorBoard under gradients/ (the box loss's as gradients/box_*)."""

    def __init__(self, period: int):
        self.period = period

    def before_step(self, trainer) -> None:
        trainer.diagnose = due(trainer, self.period, trainer.iteration + 1)

    def after_step(self, trainer, losses: dict) -> None:
        gradients = losses.pop("gradients", None)
        box_gradients = losses.pop("box_gradients", None)
        if trainer.writer is None:
            return
        histograms = {}
        if gradients is not None:
            histograms.update(
                g_positive=gradients.g_positive,
                g_negative=gradients.g_negative,
                gradient_by_g=gradients.gradient_by_g,
            )
        if box_gradients is not None:
            histograms.update(box_g=box_gradients.g, box_gradient_by_g=box_gradients.gradient_by_g)
        for name, histogram in histograms.items():
            trainer.writer.add_histogram_raw(
                f"gradients/{name}",
                histogram.min,
                histogram.max,
                histogram.total,
                histogram.sum,
                histogram.sum_squares,
                histogram.bucket_limits(),
                histogram.counts.tolist(),
                trainer.iteration,
            )
        for statistics in (gradients, box_gradients):
            for name, value in ({} if statistics is None else statistics.scalars).items():
                trainer.writer.add_scalar(f"gradients/{name}", value, trainer.iteration)


class LossLog(Hook):
    """Every `period` iterations, on rank 0: the losses, positives, negatives per positive, learning
    rate, the step's gradient norm (the L2 norm over all parameters, before `trainer.clip_grad_norm`;
    "-" after a skipped step) and ETA in the log, and every value in TensorBoard."""

    def __init__(self, period: int):
        self.period = period

    def after_step(self, trainer, losses: dict) -> None:
        if trainer.writer is None or not due(trainer, self.period):
            return
        lr = trainer.optimizer.param_groups[0]["lr"]
        seconds_per_iter = trainer.train_seconds / max(trainer.iteration, 1)
        eta = seconds_per_iter * (trainer.max_iters - trainer.iteration)
        neg_per_pos = losses["num_neg"] / max(losses["num_pos"], 1.0)
        terms = "  ".join(f"{key[5:]} {value:.4f}" for key, value in losses.items() if key.startswith("loss_"))
        grad_norm = None if trainer.grad_norm is None else float(trainer.grad_norm)
        log.info(
            "iter %d/%d  loss %.4f  %s  pos %.1f  neg/pos %.0f  lr %.5f  grad %s  %.3fs/it  eta %s",
            trainer.iteration,
            trainer.max_iters,
            losses["loss"],
            terms,  # cls, box (and dfl for a GFL head)
            losses["num_pos"],
            neg_per_pos,
            lr,
            "-" if grad_norm is None else f"{grad_norm:.3g}",
            seconds_per_iter,
            time.strftime("%H:%M:%S", time.gmtime(eta)),
        )
        for key, value in losses.items():
            trainer.writer.add_scalar(f"train/{key}", value, trainer.iteration)
        trainer.writer.add_scalar("train/negatives_per_positive", neg_per_pos, trainer.iteration)
        trainer.writer.add_scalar("train/lr", lr, trainer.iteration)
        if grad_norm is not None:
            trainer.writer.add_scalar("train/grad_norm", grad_norm, trainer.iteration)


class Evaluation(Hook):
    """Every `period` iterations, and at the end if the last iteration was not one of them: every
    process predicts its share of the validation set (`trainer.validator`), rank 0 scores it, logs
    the COCO table, per-class AP and the TIDE breakdown, sends them to TensorBoard with the PR curves,
    the error bars and a few pictures (`pr_curves.png` and `errors.png` in the run directory are the
    latest evaluation's), and keeps `checkpoints/best.pt` by AP. The latest stats are `trainer.metrics`."""

    def __init__(self, period: int):
        self.period = period
        self.evaluated = False

    def before_train(self, trainer) -> None:
        self.evaluated = False

    def after_step(self, trainer, losses: dict) -> None:
        self.evaluated = due(trainer, self.period)
        if self.evaluated:
            trainer.metrics = self.evaluate(trainer)

    def after_train(self, trainer) -> None:
        if not self.evaluated:
            trainer.metrics = self.evaluate(trainer)

    def evaluate(self, trainer) -> dict | None:
        result = trainer.validator(trainer.module)
        if result is None:  # ranks other than 0
            return None
        stats, table, detections = result
        iteration = trainer.iteration
        log.info("evaluation at iteration %d:\n%s", iteration, table.rstrip())
        if stats.get("per_class"):
            log.info("per-class AP at iteration %d:\n%s", iteration, format_per_class(stats["per_class"]))
        if stats.get("errors"):
            log.info("errors at iteration %d (TIDE): %s", iteration, format_errors(stats["errors"]))
        if trainer.writer is not None:
            self.write(trainer, stats, detections)
        if stats["AP"] > trainer.best_ap:
            trainer.best_ap = stats["AP"]
            save_checkpoint(trainer.state_dict(), trainer.output_dir / "checkpoints" / "best.pt")
        return stats

    @staticmethod
    def write(trainer, stats: dict, detections) -> None:
        writer, iteration, out = trainer.writer, trainer.iteration, trainer.output_dir
        for name in STAT_NAMES[:6]:
            writer.add_scalar(f"eval/{name}", stats[name], iteration)
        for row in stats.get("per_class", []):
            writer.add_scalar(f"eval_per_class/{row['class']}", row["AP"], iteration)
            for name in ("AP50", "AP75"):
                writer.add_scalar(f"eval_per_class_{name}/{row['class']}", row[name], iteration)
        title = f"iteration {iteration}"
        figures = {
            "pr_curves": pr_curve_figure(stats["pr_curves"], title) if "pr_curves" in stats else None,
            "errors": error_figure(stats["errors"], title) if "errors" in stats else None,
        }
        for name, figure in figures.items():
            if figure is not None:  # None without matplotlib
                figure.savefig(out / f"{name}.png", dpi=110)
                writer.add_figure(f"eval/{name}", figure, iteration)
        for kind, gain in stats.get("errors", {}).get("dAP", {}).items():
            writer.add_scalar(f"eval_errors/{kind}", gain, iteration)
        for index, picture in enumerate(getattr(trainer.validator, "pictures", lambda _: [])(detections)):
            writer.add_image(f"eval/detections_{index}", picture, iteration)  # red: predicted, green: truth


class LastCheckpoint(Hook):
    """Every `period` iterations and at the last one, on rank 0: `checkpoints/last.pt`, atomically."""

    def __init__(self, period: int):
        self.period = period

    def after_step(self, trainer, losses: dict) -> None:
        if trainer.distributed.is_main and (due(trainer, self.period) or trainer.iteration == trainer.max_iters):
            save_checkpoint(trainer.state_dict(), trainer.output_dir / "checkpoints" / "last.pt")
