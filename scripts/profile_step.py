"""Where a training step's time goes: data, backbone, FPN and heads, criterion, backward, optimizer.

    python scripts/profile_step.py [OVERRIDES ...] [--steps 6] [--warmup 2] [--json FILE]
    python scripts/profile_step.py experiment=paper_cpu

Composes the training config with the given Hydra overrides, builds the model, criterion and
optimizer as `train.py` does, and times `--steps` steps on real training batches (after `--warmup`
untimed ones), in fp32 on the CPU: the batch's loading, the model's forward split where its backbone
returns (the FPN, heads and anchors after it), the criterion (matching and losses), the backward
pass and the optimizer step. Prints the
median of each phase in seconds and its share of the step, with the machine.
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
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=args.overrides)
    torch.manual_seed(cfg.seed)
    if cfg.get("pretrain") is not None:  # the preset's backbone, built once into the cache
        instantiate(cfg.pretrain)
    train_set, _ = build_datasets(cfg.data)
    model = instantiate(cfg.model, num_classes=train_set.num_classes).train()
    criterion = build_criterion(cfg)
    optimizer = build_optimizer(cfg.optim, model)
    batches = infinite_train_batches(
        train_set, cfg.data.batch_size, 0, cfg.seed, size_divisibility=cfg.data.size_divisibility
    )
    seconds: dict[str, list[float]] = {phase: [] for phase in PHASES}
    backbone_done: list[float] = []  # the model's own forward, split where the backbone returns
    model.backbone.register_forward_hook(lambda module, args, output: backbone_done.append(time.perf_counter()))
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        images, targets = next(batches)
        loaded = time.perf_counter()
        outputs = model(images)
        forward = time.perf_counter()
        losses = criterion(outputs, targets)
        scored = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        sum(v for k, v in losses.items() if k.startswith("loss_")).backward()  # with loss_dfl for a GFL head
        backward = time.perf_counter()
        optimizer.step()
        marks = [start, loaded, backbone_done[-1], forward, scored, backward, time.perf_counter()]
        if step >= args.warmup:
            for phase, begin, end in zip(PHASES, marks, marks[1:]):
                seconds[phase].append(end - begin)
    median = {phase: statistics.median(values) for phase, values in seconds.items()}
    total = sum(median.values())
    print(f"{machine_line(describe_machine())}; fp32")
    print(f"batch {tuple(images.shape)}, median of {args.steps} steps: {total:.3f} s a step")
    for phase in PHASES:
        print(f"  {phase:<10} {median[phase]:7.3f} s  {100 * median[phase] / total:5.1f} %")
    report = {"overrides": args.overrides, "batch": list(images.shape), "seconds": median, "step": total}
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
