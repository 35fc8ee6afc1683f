"""Is data loading the bottleneck? Loader images/s against training images/s, same config.

    detector benchmark --task loader [OVERRIDES ...] [--batches 30] [--steps 10] [--json FILE]

OVERRIDES are train.py's (e.g. `data=coco data.root=/data/coco data.num_workers=8`); the default
is the default recipe on the embedded dataset. The loader figure is the training stream exactly as
train.py builds it (decode, albumentations, padding, `data.num_workers` worker processes), timed
after its first batch (worker start-up excluded); the training figure is the model's step
(forward under `trainer.amp`, losses, backward, optimizer step) on batches already in memory.
Data loading hides behind training when loader images/s exceeds training images/s: the workers
prepare the next batches while the step runs (on a CPU they share its cores, so the margin has
to be large).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from detector.cli import build_criterion, build_datasets, seed_everything
from detector.data.loader import infinite_train_batches
from detector.engine.optimizer import build_optimizer
from detector.engine.precision import resolve_precision
from detector.engine.trainer import forward_losses, resolve_device
from detector.tools.benchmarks.timing import median_seconds, timed

ROOT = Path(__file__).resolve().parents[3]  # the repository: configs/


def group_ids(cfg, train_set):
    return train_set.aspect_ratio_groups() if cfg.data.group_by_aspect_ratio else None


def loader_images_per_second(cfg, train_set, batches: int) -> float:
    stream = infinite_train_batches(
        train_set,
        cfg.data.batch_size,
        cfg.data.num_workers,
        cfg.seed,
        size_divisibility=cfg.data.size_divisibility,
        group_ids=group_ids(cfg, train_set),
    )
    next(stream)  # workers started, first batch served (they may have prefetched 2 per worker: a few % at 30)

    def serve():
        for _ in range(batches):
            next(stream)

    return batches * cfg.data.batch_size / timed(serve)[1]


def training_images_per_second(cfg, train_set, steps: int) -> float:
    device = resolve_device(cfg.trainer.device)
    precision = resolve_precision(cfg.trainer.amp, device)
    memory_format = torch.channels_last if cfg.trainer.channels_last else torch.contiguous_format
    model = instantiate(cfg.model, num_classes=train_set.num_classes).to(device, memory_format=memory_format).train()
    criterion = build_criterion(cfg).to(device).train()
    optimizer = build_optimizer(cfg.optim, model)
    stream = infinite_train_batches(
        train_set,
        cfg.data.batch_size,
        0,
        cfg.seed,
        size_divisibility=cfg.data.size_divisibility,
        group_ids=group_ids(cfg, train_set),
    )
    batches = iter([next(stream) for _ in range(steps + 1)])

    def step():
        images, targets = next(batches)
        images = images.to(device, memory_format=memory_format)
        targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
        loss, _ = forward_losses(model, criterion, images, targets, precision)  # the training loop's forward
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return cfg.data.batch_size / median_seconds(step, steps, warmup=1, device=device)  # the first step warms up


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--batches", type=int, default=30, help="loader batches timed")
    parser.add_argument("--steps", type=int, default=10, help="training steps timed")
    parser.add_argument("--json", type=Path, default=Path("loader_benchmark.json"))
    args = parser.parse_args(argv)
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=args.overrides)
    seed_everything(cfg.seed)
    train_set, _ = build_datasets(cfg.data)
    loader = loader_images_per_second(cfg, train_set, args.batches)
    training = training_images_per_second(cfg, train_set, args.steps)
    report = {
        "overrides": args.overrides,
        "batch_size": cfg.data.batch_size,
        "num_workers": cfg.data.num_workers,
        "threads": torch.get_num_threads(),
        "loader_images_per_s": round(loader, 2),
        "training_images_per_s": round(training, 2),
        "loader_to_training": round(loader / training, 2),
    }
    print(
        f"batch {cfg.data.batch_size}, data.num_workers={cfg.data.num_workers}, {torch.get_num_threads()} threads: "
        f"loader {loader:.1f} images/s, training {training:.1f} images/s "
        f"(loader / training = {loader / training:.1f})"
    )
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
