"""Wall-clock timing for the benchmarks: one call, or medians of steps run round-robin."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def synchronize(device: torch.device | None) -> None:
    """Wait for a CUDA `device`'s queued work; nothing elsewhere."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device | None = None) -> tuple[Any, float]:
    """`fn()`'s result and its seconds, a CUDA `device` synchronized before and after."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start


def interleaved(
    steps: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1, device: torch.device | None = None
) -> dict[str, float]:
    """Median seconds of each step, the steps run round-robin (A B C … A B C …): `warmup` untimed
    rounds, then `repeats` timed ones, so that no step is favoured by its place in the order."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            samples[name].append(timed(step, device)[1])
    return {name: statistics.median(values) for name, values in samples.items()}


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 1, device: torch.device | None = None) -> float:
    """Median seconds of `repeats` calls of `fn` after `warmup` untimed ones."""
    return interleaved({"": fn}, repeats, warmup, device)[""]
