"""Iteration-based training loop: AMP, gradient clipping, periodic evaluation, checkpoints, logs."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from detector.engine.checkpoint import (
    CHECKPOINT_FORMAT,
    capture_rng_state,
    check_same_training,
    load_checkpoint,
    load_model_weights,
    restore_rng_state,
    upgrade_training_state,
)
from detector.engine.diagnostics import box_gradient_statistics, gradient_statistics, loss_inputs
from detector.engine.distributed import Distributed, broadcast_from_main, gather_to_main, sum_over_processes
from detector.engine.evaluator import STAT_NAMES, format_metrics
from detector.engine.hooks import Evaluation, GradientDiagnostics, Hook, LastCheckpoint, LossLog, TimeBudget
from detector.engine.hparams import log_hparams
from detector.engine.machine import describe_machine
from detector.engine.precision import Precision, resolve_precision
from detector.engine.settings import TrainerSettings

log = logging.getLogger(__name__)


def forward_losses(
    model: nn.Module, criterion: nn.Module, images: torch.Tensor, targets: list[dict], precision: Precision
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training step's forward: the model under `precision`'s autocast, the criterion in float32;
    returns (the sum of the `loss_*` terms, the criterion's dict). The benchmark times this same call."""
    with precision.autocast(images.device):
        outputs = model(images)
    with torch.autocast(images.device.type, enabled=False):
        loss_dict = criterion(outputs, targets)
    return sum(v for k, v in loss_dict.items() if k.startswith("loss_")), loss_dict


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"trainer.device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("trainer.device=cuda but no CUDA device is visible; use trainer.device=cpu or auto")
    return torch.device(device)


class Trainer:
    """Trains `model` with `criterion` as `settings` say (a `TrainerSettings`; the settings below are
    its fields), the forward under `amp` (a `Precision`, or a `trainer.amp` value resolved by
    `resolve_precision`).

    With a `time_budget` (seconds of training steps, evaluation excluded), `max_iters` is only the
    upper bound: after `budget_probe_iters` iterations the measured seconds per iteration (over the
    last three quarters of them; the first steps warm up) fix the iteration count,
    N = min(max_iters, ⌊(budget − seconds so far) / seconds per iteration⌋ + iterations so far),
    and the schedule's horizon with it (rank 0's figure under DDP). The probe lies inside the warmup, where
    the schedule does not depend on the horizon, so `max_iters=N` without a budget reruns the same
    training exactly. N is logged, saved in checkpoints (a resumed run keeps it) and written to
    metrics.json (`time_budget`).

    `batches(iteration)` returns this process's training batches from that iteration on (so a
    resumed run continues the same stream). Under DDP (`distributed`) the model is wrapped in
    `DistributedDataParallel` (BatchNorm made synchronous with `sync_bn`, CUDA only; with
    `compile` the training forward is `torch.compile`d, after the DDP wrap), logged
    losses are averaged over processes, evaluation runs on every process and is scored on rank 0,
    and only rank 0 writes logs, TensorBoard events, checkpoints and metrics.

    The loop itself only steps; around each step its hooks (`detector.engine.hooks`, in this order,
    then any `hooks` given) fix the time budget, log where the classification and box gradients go
    every `diagnostics_period` iterations (what the criterion passes its `cls_loss` and `box_loss`),
    log losses, learning rate, the gradient norm (before clipping) and ETA every `log_period` (log
    file, TensorBoard), run `validator(model)` every `eval_period` and keep `checkpoints/best.pt` by AP, and write
    `checkpoints/last.pt` every `checkpoint_period` and at the end. A step whose loss is not finite
    updates nothing and is logged with the loss terms at fault; `max_consecutive_nonfinite` of them
    in a row stop training with a clear error.
    `train()` returns the final metrics, also written to metrics.json with the precision used and
    the machine, and, given `hparams` (`detector.engine.hparams.run_hparams`), to TensorBoard's
    HParams dashboard with them. Checkpoints hold everything a resumed run needs to continue
    exactly: model, optimizer, scheduler, scaler, loss state, iteration and RNG states.
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler,
        batches: Callable[[int], Iterator],
        validator: Callable | None,
        output_dir: str | Path,
        settings: TrainerSettings,
        batch_size: int,
        device: torch.device,
        amp: str | Precision = "off",
        distributed: Distributed | None = None,
        run_config: dict | None = None,
        clock: Callable[[], float] = time.perf_counter,
        hparams: dict | None = None,
        hooks: list[Hook] | None = None,
    ):
        self.settings = settings
        self.distributed = distributed or Distributed()
        if settings.sync_bn and self.distributed.enabled and device.type != "cuda":
            raise ValueError(
                "trainer.sync_bn=true needs CUDA (PyTorch's SyncBatchNorm is GPU-only); on CPU use "
                "trainer.sync_bn=false or a backbone without batch statistics (model.backbone.norm=gn)"
            )
        self.module = model  # the bare model: what is saved, loaded and evaluated
        self.model = model  # what trains: the DistributedDataParallel wrapper once train() starts
        self.criterion = criterion
        self.optimizer, self.scheduler = optimizer, scheduler
        self.batches, self.validator = batches, validator
        self.stream: Iterator | None = None
        self.output_dir = Path(output_dir)
        self.max_iters = settings.max_iters  # the horizon: a time budget or a resumed checkpoint may move it
        self.batch_size, self.clock = batch_size, clock
        self.budget_fixed = False
        self.probe_start: tuple[int, float] | None = None  # (iteration, train_seconds) where the probe's timing starts
        self.device = device
        self.precision = amp if isinstance(amp, Precision) else resolve_precision(amp, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision.dtype == torch.float16)
        self.memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
        self.run_config = run_config or {}
        self.hparams = hparams
        self.iteration = 0
        self.best_ap = -math.inf
        self.train_seconds = 0.0
        self.nonfinite_in_a_row = 0
        self.skipped_steps = 0
        self.grad_norm: torch.Tensor | None = None  # the last step's gradient norm, before clipping
        self.replaced_images: set[int] = set()
        self.writer: SummaryWriter | None = None  # rank 0's, while train() runs
        self.metrics: dict | None = None  # the latest evaluation's stats
        self.diagnose = False  # whether the next step computes the gradient statistics
        self.hooks = [
            *(
                [TimeBudget(settings.time_budget, settings.budget_probe_iters)]
                if settings.time_budget is not None
                else []
            ),
            GradientDiagnostics(settings.diagnostics_period),
            LossLog(settings.log_period),
            *([Evaluation(settings.eval_period)] if validator is not None else []),
            LastCheckpoint(settings.checkpoint_period),
            *(hooks or []),
        ]

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.module.state_dict(),
            "criterion": self.criterion.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": self.iteration,
            "best_ap": self.best_ap,
            "train_seconds": self.train_seconds,
            "skipped_steps": self.skipped_steps,
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
            "replaced_images": sorted(self.replaced_images),
            "rng": capture_rng_state(),
            "max_iters": self.max_iters,
            "budget_fixed": self.budget_fixed,
            "config": self.run_config,
        }

    def resume(self, path: str | Path) -> None:
        state = upgrade_training_state(load_checkpoint(path), path, self.max_iters)
        load_model_weights(self.module, state, path, self.run_config)
        check_same_training(state.get("config") or {}, self.run_config, path)
        self.criterion.load_state_dict(state["criterion"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration, self.best_ap = state["iteration"], state["best_ap"]
        self.train_seconds = state["train_seconds"]
        self.skipped_steps, self.nonfinite_in_a_row = state["skipped_steps"], state["nonfinite_in_a_row"]
        self.replaced_images = set(state["replaced_images"])
        budgeted, probe = self.settings.time_budget is not None, self.settings.budget_probe_iters
        if budgeted and state["budget_fixed"]:
            self.budget_fixed = True
            self.max_iters = state["max_iters"]  # the count the budget fixed before the interruption
        elif budgeted and probe // 4 <= self.iteration < probe:
            self.probe_start = (self.iteration, self.train_seconds)  # time the probe's rest in this process
        if state["max_iters"] != self.max_iters:
            log.warning(
                "the checkpoint trained towards %d iterations; this run goes to %d and its schedule with it",
                state["max_iters"],
                self.max_iters,
            )
        self.set_horizon(self.max_iters)  # the scheduler's state brought back the checkpoint's horizon
        if state["rng"] is not None:
            restore_rng_state(state["rng"])
        self.stream = None  # the data stream restarts at the restored iteration
        log.info("resumed from %s at iteration %d", path, self.iteration)

    # ---------------------------------------------------------------- loop
    def train(self) -> dict:
        finished = broadcast_from_main(self._finished_metrics() if self.distributed.is_main else None)
        if finished is not None:
            log.info(
                "the run finished at iteration %d: its metrics.json stands, nothing to train or evaluate",
                self.iteration,
            )
            return finished
        self.module.to(self.device, memory_format=self.memory_format)
        self.criterion.to(self.device)
        if self.distributed.enabled:
            if self.settings.sync_bn:
                self.module = nn.SyncBatchNorm.convert_sync_batchnorm(self.module)  # shares the parameters
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.module, device_ids=device_ids)
        if self.settings.compile:  # the training forward only; evaluation and checkpoints use the bare module
            self.model = torch.compile(self.model)
        self.model.train()
        main = self.distributed.is_main
        self.writer = writer = SummaryWriter(str(self.output_dir / "tb")) if main else None
        bar = tqdm(
            total=self.max_iters,
            initial=self.iteration,
            disable=not (main and sys.stderr.isatty()),
            dynamic_ncols=True,
            desc="train",
        )
        try:
            with logging_redirect_tqdm():  # log lines print above the progress bar
                metrics = self._loop(bar)
            if writer is not None and self.hparams:
                log_hparams(writer, self.hparams, metrics or {})
        except FloatingPointError as error:  # diverged: the status goes to metrics.json, then the error on
            self._write_metrics({}, status="diverged", error=str(error))
            raise
        finally:
            bar.close()
            if writer is not None:
                writer.close()
            self.writer = None
        return self._write_metrics(metrics or {}, status="finished")

    def _loop(self, bar: tqdm) -> dict | None:
        self.metrics = None
        for hook in self.hooks:
            hook.before_train(self)
        while self.iteration < self.max_iters:
            for hook in self.hooks:
                hook.before_step(self)
            start = self.clock()
            losses = self.step(self.diagnose)
            self.train_seconds += self.clock() - start
            self.iteration += 1
            for hook in self.hooks:
                hook.after_step(self, losses)
            bar.total = self.max_iters  # a time budget may have fixed it
            bar.update(1)
            bar.set_postfix(loss=f"{losses['loss']:.4f}")
        for hook in self.hooks:
            hook.after_train(self)
        return self.metrics

    def step(self, diagnose: bool = False) -> dict:
        """One optimizer step; returns the losses as floats, averaged over processes (the positive
        count summed), and, if `diagnose`, this process's "gradients" statistics (and "box_gradients" for a
        box loss on deltas)."""
        if self.stream is None:
            self.stream = self.batches(self.iteration)
        images, targets = next(self.stream)
        for target in targets:  # images the dataset could not read and replaced
            self.replaced_images.update(target.get("replaces", ()))
        buffers = [*self.module.buffers(), *self.criterion.buffers()]  # BatchNorm statistics, loss EMAs
        saved = [b.detach().clone() for b in buffers]
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        box_loss = getattr(self.criterion, "box_loss", None)
        diagnose_box = diagnose and getattr(box_loss, "input_space", None) == "deltas"  # g_r: a residual's axis
        with (
            loss_inputs(self.criterion.cls_loss, enabled=diagnose) as seen,
            loss_inputs(box_loss, enabled=diagnose_box) as seen_box,
        ):
            loss, loss_dict = forward_losses(self.model, self.criterion, images, targets, self.precision)
        diagnostics = {}
        if diagnose:
            logits, cls_targets = zip(*seen)
            diagnostics["gradients"] = gradient_statistics(
                loss_dict["loss_cls"], logits, cls_targets, self.criterion.cls_loss
            )
        if seen_box:  # the criterion called the box loss (on deltas) at least once
            deltas, box_targets = zip(*seen_box)
            box_statistics = box_gradient_statistics(loss_dict["loss_box"], deltas, box_targets)
            if box_statistics is not None:
                diagnostics["box_gradients"] = box_statistics
        losses = self._reduce({"loss": loss, **loss_dict})
        if not math.isfinite(losses["loss"]):  # the same verdict on every process
            with torch.no_grad():
                for buffer, value in zip(buffers, saved):
                    buffer.copy_(value)
            self._skip_nonfinite(losses)
            return losses
        self.nonfinite_in_a_row = 0
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)  # a no-op without float16's loss scaling
        gradients = [p.grad for p in self.model.parameters() if p.grad is not None]
        self.grad_norm = torch.nn.utils.get_total_norm(gradients)  # read only when logged: no wait for the device
        if self.settings.clip_grad_norm is not None:
            torch.nn.utils.clip_grads_with_norm_(self.model.parameters(), self.settings.clip_grad_norm, self.grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return {**losses, **diagnostics}

    def set_horizon(self, max_iters: int) -> None:
        """End training and the schedule (every factor with a `max_iters`) at `max_iters`."""
        self.max_iters = max_iters
        for factor in self.scheduler.lr_lambdas:
            if hasattr(factor, "max_iters"):
                factor.max_iters = max_iters

    def _skip_nonfinite(self, losses: dict[str, float]) -> None:
        """No update from this batch: no optimizer step, and the step's buffers (BatchNorm statistics,
        loss EMAs) were restored; the schedule still advances with the iteration. Stop after
        `max_consecutive_nonfinite` such steps in a row, before anything is written from them."""
        self.nonfinite_in_a_row += 1
        self.skipped_steps += 1
        self.grad_norm = None
        terms = ", ".join(k for k, v in losses.items() if k.startswith("loss_") and not math.isfinite(v))
        log.error(
            "non-finite loss at iteration %d (%s): %s; step skipped, %d in a row",
            self.iteration + 1,
            terms,
            losses,
            self.nonfinite_in_a_row,
        )
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        limit = self.settings.max_consecutive_nonfinite
        if self.nonfinite_in_a_row >= limit:
            raise FloatingPointError(
                f"non-finite loss for {self.nonfinite_in_a_row} iterations in a row (trainer.max_consecutive_nonfinite="
                f"{limit}), the last at iteration {self.iteration + 1} in {terms}; training stopped. The last good "
                f"checkpoint is {self.output_dir / 'checkpoints' / 'last.pt'}; try a lower optim.lr, a longer "
                "schedule.warmup_iters or trainer.clip_grad_norm."
            )

    def _reduce(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        stacked = torch.stack([v.detach().float() for v in values.values()])
        if self.distributed.enabled:
            stacked = sum_over_processes(stacked)
        world = self.distributed.world_size
        # a wait for the device (the criterion's row counts are the other one): the verdict needs them
        host = stacked.tolist()
        return {name: v if name in ("num_pos", "num_neg") else v / world for name, v in zip(values, host)}

    # ---------------------------------------------------------------- helpers
    def _finished_metrics(self) -> dict | None:
        """metrics.json of a run resumed at its end (a sweep rerun with trainer.resume=auto keeps
        its finished jobs without evaluating them again); None otherwise. A run that diverged stops
        again with its error, without training."""
        path = self.output_dir / "metrics.json"
        if not path.is_file():
            return None
        metrics = json.loads(path.read_text())
        if metrics.get("status") == "diverged":
            raise FloatingPointError(
                f"this run diverged at iteration {metrics['iteration']} ({path}: {metrics.get('error')}); delete "
                "its metrics.json to train it again"
            )
        finished = self.iteration >= self.max_iters and metrics.get("iteration") == self.iteration
        return metrics if finished and "AP" in metrics else None

    def _write_metrics(self, stats: dict, status: str, error: str | None = None) -> dict:
        """metrics.json: the COCO stats, the run's `status` ("finished" or "diverged", with its
        `error`), and how the run went."""
        metrics = {name: stats[name] for name in STAT_NAMES[:6] if name in stats}
        metrics["status"] = status
        if error is not None:
            metrics["error"] = error
        for key in ("per_class", "pr_curves", "errors"):
            if key in stats:
                metrics[key] = stats[key]
        replaced = sorted({i for ids in gather_to_main([sorted(self.replaced_images)]) or [] for i in ids})
        if self.settings.time_budget is not None:
            metrics["time_budget"] = {
                "seconds": self.settings.time_budget,
                "max_iters": self.max_iters,
                "probe_iters": self.settings.budget_probe_iters,
            }
        metrics.update(
            iteration=self.iteration,
            precision=self.precision.as_dict(),
            machine=describe_machine(),
            skipped_steps=self.skipped_steps,
            replaced_images=replaced,
            train_seconds=round(self.train_seconds, 2),
            images_per_second=round(self.iteration * self.batch_size / max(self.train_seconds, 1e-9), 3),
        )
        if not self.distributed.is_main:
            return metrics
        (self.output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        if replaced:
            log.warning(
                "%d training images could not be used (see the warnings above) and were replaced by others: ids %s",
                len(replaced),
                replaced,
            )
        if stats:
            log.info("final COCO evaluation (iteration %d):\n%s", self.iteration, format_metrics(stats))
        return metrics
