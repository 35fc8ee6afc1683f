"""Batching: pad images to a common size divisible by the largest stride; loop forever for training."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler


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
            slot[:, :image.shape[1], :image.shape[2]].copy_(image)
        return padded, list(targets)


def infinite_train_batches(dataset: Dataset, batch_size: int, num_workers: int, seed: int,
                           size_divisibility: int = 128, pin_memory: bool = False) -> Iterator:
    """Yield shuffled training batches forever; epoch e is shuffled with seed + e."""
    if batch_size < 1:
        raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
    if len(dataset) < batch_size:
        raise ValueError(f"the training set has {len(dataset)} images, fewer than data.batch_size={batch_size}")
    generator = torch.Generator()
    loader = DataLoader(dataset, batch_size=batch_size, sampler=RandomSampler(dataset, generator=generator),
                        num_workers=num_workers, collate_fn=PadCollate(size_divisibility), drop_last=True,
                        pin_memory=pin_memory, persistent_workers=num_workers > 0, generator=generator)
    epoch = 0
    while True:
        generator.manual_seed(seed + epoch)
        yield from loader
        epoch += 1


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int, size_divisibility: int = 128,
                pin_memory: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=PadCollate(size_divisibility), pin_memory=pin_memory)
