"""The training stream: an infinite, deterministic sequence of batches that resumes exactly and
splits over processes (the role of `DistributedSampler` for iteration-based training)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


def augmentation_seed(seed: int, position: int) -> int:
    """The seed of the random augmentation of the `position`-th sample of the stream."""
    return int(np.random.SeedSequence([seed, position]).generate_state(1)[0])


class TrainingBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields this process's share of each global batch as [(dataset index, augmentation seed)].

    The stream concatenates permutations of the dataset, epoch e drawn with `seed` + e, and cuts
    it into global batches of `batch_size`. With `group_ids` (e.g. landscape / portrait images,
    as torchvision's references group by aspect ratio) a batch takes samples of one group only,
    in stream order, so that padding wastes little. Each sample's augmentation is seeded from
    (`seed`, its stream position): it does not depend on the number of workers or processes.
    Process `rank` of `world_size` takes the rank-th slice of `batch_size / world_size` of every
    global batch; `start` skips the first `start` global batches (resuming at that iteration).
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
        group_ids: Sequence[int] | None = None,
    ):
        if size < batch_size:
            raise ValueError(f"the training set has {size} images, fewer than data.batch_size={batch_size}")
        if batch_size < 1 or batch_size % world_size:
            raise ValueError(
                f"data.batch_size (the global batch) must be a positive multiple of the number of "
                f"processes ({world_size}), got {batch_size}"
            )
        if group_ids is not None and len(group_ids) != size:
            raise ValueError(f"group_ids has {len(group_ids)} entries for {size} images")
        self.size, self.batch_size, self.seed, self.start = size, batch_size, seed, start
        self.rank, self.world_size = rank, world_size
        self.group_ids = group_ids

    def global_batches(self) -> Iterator[list[tuple[int, int]]]:
        """[(dataset index, stream position)] for every global batch, from the first."""
        buffers: dict[int, list[tuple[int, int]]] = {}
        position, epoch = 0, 0
        while True:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
            for index in order:
                group = buffers.setdefault(0 if self.group_ids is None else self.group_ids[index], [])
                group.append((index, position))
                position += 1
                if len(group) == self.batch_size:
                    yield group.copy()
                    group.clear()
            epoch += 1

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        share = self.batch_size // self.world_size
        begin = self.rank * share
        for number, batch in enumerate(self.global_batches()):
            if number >= self.start:
                yield [
                    (index, augmentation_seed(self.seed, position)) for index, position in batch[begin : begin + share]
                ]
