"""Where a training step's time goes: data, backbone, FPN and heads, criterion, backward, optimizer.

    python scripts/profile_step.py [OVERRIDES ...] [--steps 6] [--warmup 2] [--ops N] [--json FILE]
    python scripts/profile_step.py experiment=paper_cpu --ops 15

Composes the training config with the given Hydra overrides, builds the model, criterion and
optimizer as `train.py` does, and times `--steps` steps on real training batches (after `--warmup`
untimed ones), in fp32 on the CPU, in the memory format `trainer.channels_last` gives training: the
batch's loading, the model's forward split where its backbone returns (the FPN, heads and anchors
after it), the criterion (matching and losses), the backward pass and the optimizer step. Prints the
median of each phase in seconds and its share of the step, with the machine. `--ops N` then runs
two more steps under `torch.profiler` and prints the N operators with the most time of their own.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from detector.cli import build_criterion, build_datasets
from detector.data.loader import infinite_train_batches
from detector.engine.machine import describe_machine, machine_line
from detector.engine.optimizer import build_optimizer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PHASES = ("data", "backbone", "fpn+heads", "criterion", "backward", "optimizer")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for train.py")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--ops", type=int, default=0, help="print the N operators with the most self time")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=args.overrides)
    torch.manual_seed(cfg.seed)
    if cfg.get("pretrain") is not None:  # the preset's backbone, built once into the cache
        instantiate(cfg.pretrain)
    train_set, _ = build_datasets(cfg.data)
    memory_format = torch.channels_last if cfg.trainer.channels_last else torch.contiguous_format
    model = instantiate(cfg.model, num_classes=train_set.num_classes).to(memory_format=memory_format).train()
    criterion = build_criterion(cfg)
    optimizer = build_optimizer(cfg.optim, model)
    batches = infinite_train_batches(
        train_set, cfg.data.batch_size, 0, cfg.seed, size_divisibility=cfg.data.size_divisibility
    )
    seconds: dict[str, list[float]] = {phase: [] for phase in PHASES}
    backbone_done: list[float] = []  # the model's own forward, split where the backbone returns
    model.backbone.register_forward_hook(lambda module, args, output: backbone_done.append(time.perf_counter()))
    shapes: list[list[int]] = []

    def step_marks() -> list[float]:
        start = time.perf_counter()
        images, targets = next(batches)
        images = images.contiguous(memory_format=memory_format)
        loaded = time.perf_counter()
        outputs = model(images)
        forward = time.perf_counter()
        losses = criterion(outputs, targets)
        scored = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        sum(v for k, v in losses.items() if k.startswith("loss_")).backward()  # with loss_dfl for a GFL head
        backward = time.perf_counter()
        optimizer.step()
        shapes.append(list(images.shape))
        return [start, loaded, backbone_done[-1], forward, scored, backward, time.perf_counter()]

    for step in range(args.warmup + args.steps):
        marks = step_marks()
        if step >= args.warmup:
            for phase, begin, end in zip(PHASES, marks, marks[1:]):
                seconds[phase].append(end - begin)
    median = {phase: statistics.median(values) for phase, values in seconds.items()}
    total = sum(median.values())
    layout = "channels-last" if cfg.trainer.channels_last else "contiguous"
    print(f"{machine_line(describe_machine())}; fp32, {layout}")
    print(f"batch {tuple(shapes[-1])}, median of {args.steps} steps: {total:.3f} s a step")
    for phase in PHASES:
        print(f"  {phase:<10} {median[phase]:7.3f} s  {100 * median[phase] / total:5.1f} %")
    report = {"overrides": args.overrides, "batch": shapes[-1], "layout": layout, "seconds": median, "step": total}
    if args.ops > 0:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
            for _ in range(2):
                step_marks()
        operators = sorted(profiler.key_averages(), key=lambda event: event.self_cpu_time_total, reverse=True)
        report["operators"] = {event.key: event.self_cpu_time_total / 2e6 for event in operators[: args.ops]}
        print(f"the {args.ops} operators with the most self time, seconds a step (2 steps under torch.profiler):")
        for name, op_seconds in report["operators"].items():
            print(f"  {name:<40} {op_seconds:7.3f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
