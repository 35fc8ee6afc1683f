"""Batching: pad images to a common size divisible by the largest stride; the endless training stream."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator, Sequence

from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from detector.data.sampler import TrainingBatchSampler


class PadCollate:
    """Stack images into [B, 3, H, W], zero-padded at the bottom/right to multiples of `size_divisibility`."""

    def __init__(self, size_divisibility: int = 128):
        self.size_divisibility = size_divisibility

    def __call__(self, batch: list) -> tuple[Tensor, list[dict]]:
        images, targets = zip(*batch)
        d = self.size_divisibility
        height = -(-max(i.shape[1] for i in images) // d) * d
        width = -(-max(i.shape[2] for i in images) // d) * d
        padded = images[0].new_zeros(len(images), 3, height, width)
        for slot, image in zip(padded, images):
            slot[:, : image.shape[1], : image.shape[2]].copy_(image)
        return padded, list(targets)


def worker_context(num_workers: int):
    """The start method of DataLoader workers: Python's default, except inside a joblib/loky sweep
    job (`hydra/launcher=parallel`), whose default ("loky") cannot start them and which spawned or
    forkserver children cannot re-create: there, fork (POSIX)."""
    method = multiprocessing.get_start_method(allow_none=True)
    if num_workers == 0 or method in (None, *multiprocessing.get_all_start_methods()):
        return None
    return multiprocessing.get_context("fork")


def infinite_train_batches(
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    seed: int,
    start_iteration: int = 0,
    rank: int = 0,
    world_size: int = 1,
    group_ids: Sequence[int] | None = None,
    size_divisibility: int = 128,
    pin_memory: bool = False,
) -> Iterator:
    """This process's batches of the global training stream (`TrainingBatchSampler`), forever,
    from iteration `start_iteration`; `batch_size` is the global batch over all processes."""
    sampler = TrainingBatchSampler(len(dataset), batch_size, seed, start_iteration, rank, world_size, group_ids)
    return iter(
        DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=num_workers,
            collate_fn=PadCollate(size_divisibility),
            pin_memory=pin_memory,
            multiprocessing_context=worker_context(num_workers),
        )
    )


def eval_loader(
    dataset: Dataset, batch_size: int, num_workers: int, size_divisibility: int = 128, pin_memory: bool = False
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=PadCollate(size_divisibility),
        pin_memory=pin_memory,
        multiprocessing_context=worker_context(num_workers),
    )
