"""This project's ImageNet: a ResNet body pretrained to classify single-object crops drawn by the
glyph generator (`detector.data.glyphs.classification_crop`, 80 balanced classes).

Every crop follows from (seed, index), so the run is deterministic from its seed whatever the
number of loader workers, and no crop is seen twice. The result is a torchvision ResNet state dict
(`model.backbone.weights_path` loads it; `fc.*` is dropped there), written atomically, with a JSON
beside it that holds the settings, the held-out accuracy and the time it took. A second call
with the same settings returns the cached file; concurrent calls (the jobs of a parallel sweep, the
ranks of torchrun) wait on a file lock, so one trains and the others read its result.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from detector.data.glyphs import CLASSES, GENERATOR_VERSION, classification_crop
from detector.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from detector.engine.checkpoint import save_checkpoint
from detector.engine.optimizer import parameter_groups
from detector.engine.precision import resolve_precision
from detector.engine.schedule import WarmupCosine, lambda_scheduler

log = logging.getLogger(__name__)
PRETRAIN_VERSION = 2


class GlyphCrops(Dataset):
    """`length` crops of `size` pixels; crop i is drawn from the generator seeded by (seed, i)."""

    def __init__(self, length: int, size: int, seed: int):
        self.length, self.size, self.seed = length, size, seed
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        pixels, label = classification_crop(np.random.default_rng([self.seed, index]), self.size)
        image = torch.from_numpy(pixels).permute(2, 0, 1).float()
        return (image - self.mean) / self.std, label


def pretrain_backbone(
    out: str | Path,
    depth: int = 18,
    steps: int = 1400,
    batch_size: int = 128,
    crop_size: int = 48,
    lr: float = 0.1,
    weight_decay: float = 1e-4,
    warmup_steps: int = 50,
    seed: int = 0,
    eval_crops: int = 2000,
    num_workers: int = 1,
    amp: str = "auto",
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """Train ResNet-`depth` (trainable BatchNorm) to classify glyph crops with SGD (momentum 0.9,
    Nesterov, no decay on norms and biases), linear warmup then cosine; write its state dict to
    `out` and the record to `out` with suffix .json; return the record. Defaults: 1400 steps of
    128 crops of 48 px, LR 0.1 after 50 warmup steps, weight decay 1e-4."""
    out = Path(out).expanduser()
    settings = dict(
        depth=depth,
        steps=steps,
        batch_size=batch_size,
        crop_size=crop_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup_steps=warmup_steps,
        seed=seed,
        eval_crops=eval_crops,
        amp=amp,
        device=torch.device(device).type,
        classes=len(CLASSES),
        generator_version=GENERATOR_VERSION,
        version=PRETRAIN_VERSION,
    )
    if steps < 1 or batch_size < 1 or crop_size < 16 or not 0 <= warmup_steps < steps:
        raise ValueError(
            f"pretraining needs steps, batch_size >= 1, crop_size >= 16 and 0 <= warmup_steps < steps, got {settings}"
        )
    with _exclusive(out.with_suffix(".lock")):
        cached = _cached_record(out, settings)
        if cached is not None:
            log.info("pretrained backbone %s is cached (held-out accuracy %.1f %%)", out, 100 * cached["accuracy"])
            return cached
        torch.manual_seed(seed)
        device = torch.device(device)
        precision = resolve_precision(amp, device)
        model = getattr(torchvision.models, f"resnet{depth}")(weights=None, num_classes=len(CLASSES))
        model.to(device, memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(
            parameter_groups(model, lr, weight_decay, 0.0, 0.0), lr=lr, momentum=0.9, nesterov=True
        )
        scheduler = lambda_scheduler(optimizer, WarmupCosine(steps, warmup_steps, warmup_factor=0.01))
        loader = DataLoader(
            GlyphCrops(steps * batch_size, crop_size, seed * 2),
            batch_size=batch_size,
            num_workers=num_workers,
            persistent_workers=False,
        )
        start = time.perf_counter()
        model.train()
        bar = tqdm(loader, total=steps, desc=f"pretraining ResNet-{depth} on glyph crops", disable=not progress)
        for images, labels in bar:
            with precision.autocast(device):
                logits = model(images.to(device).contiguous(memory_format=torch.channels_last))
            loss = F.cross_entropy(logits.float(), labels.to(device))
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"pretraining loss is {loss.item()} at step {scheduler.last_epoch}; lower lr={lr}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        seconds = time.perf_counter() - start
        accuracy, held_out_loss = evaluate_crops(model, crop_size, seed * 2 + 1, eval_crops, batch_size, device)
        save_checkpoint({k: v.detach().cpu() for k, v in model.state_dict().items()}, out)
        record = {
            "settings": settings,
            "accuracy": accuracy,
            "held_out_loss": held_out_loss,
            "train_seconds": seconds,
            "precision": precision.name,
        }
        staging = out.with_suffix(".json.tmp")
        staging.write_text(json.dumps(record, indent=1))
        os.replace(staging, out.with_suffix(".json"))
        log.info(
            "pretrained ResNet-%d in %.0f s: held-out accuracy %.1f %% over %d classes; written to %s",
            depth,
            seconds,
            100 * accuracy,
            len(CLASSES),
            out,
        )
        return record


def _cached_record(out: Path, settings: dict) -> dict | None:
    record_file = out.with_suffix(".json")
    if not (out.is_file() and record_file.is_file()):
        return None
    record = json.loads(record_file.read_text())
    return record if record.get("settings") == settings else None


@contextmanager
def _exclusive(lock_path: Path):
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@torch.no_grad()
def evaluate_crops(
    model: torch.nn.Module, crop_size: int, seed: int, count: int, batch_size: int, device: torch.device | str = "cpu"
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of `model` on `count` crops drawn from `seed`."""
    was_training = model.training
    model.eval()
    correct, loss = 0, 0.0
    for images, labels in DataLoader(GlyphCrops(count, crop_size, seed), batch_size=batch_size):
        logits = model(images.to(device)).float()
        correct += int((logits.argmax(1).cpu() == labels).sum())
        loss += float(F.cross_entropy(logits, labels.to(device), reduction="sum"))
    model.train(was_training)
    return correct / count, loss / count
