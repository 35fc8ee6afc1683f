"""The training stream: deterministic, resumable, split over processes, grouped by aspect ratio."""

import itertools

import pytest
import torch

from detector.data.sampler import TrainingBatchSampler, augmentation_seed


def take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_each_epoch_is_a_permutation_drawn_from_seed_plus_epoch():
    batches = take(TrainingBatchSampler(10, 5, seed=3), 4)
    indices = [index for batch in batches for index, _ in batch]
    assert indices[:10] == torch.randperm(10, generator=torch.Generator().manual_seed(3)).tolist()
    assert indices[10:] == torch.randperm(10, generator=torch.Generator().manual_seed(4)).tolist()
    assert [seed for batch in batches for _, seed in batch] == [augmentation_seed(3, p) for p in range(20)]


def test_processes_split_every_global_batch_and_together_see_it_all():
    whole = take(TrainingBatchSampler(23, 6, seed=0), 9)  # crosses epoch boundaries (23 is not a multiple of 6)
    ranks = [take(TrainingBatchSampler(23, 6, seed=0, rank=r, world_size=3), 9) for r in range(3)]
    for step, batch in enumerate(whole):
        assert [item for rank in ranks for item in rank[step]] == batch
        assert all(len(rank[step]) == 2 for rank in ranks)


def test_start_resumes_the_same_stream():
    stream = take(TrainingBatchSampler(17, 4, seed=1, rank=1, world_size=2), 12)
    assert take(TrainingBatchSampler(17, 4, seed=1, start=7, rank=1, world_size=2), 5) == stream[7:]


def test_aspect_ratio_groups_never_mix_and_keep_every_image():
    groups = [0, 1, 1, 0, 1, 1, 1, 0, 1, 1]
    batches = take(TrainingBatchSampler(10, 3, seed=0, group_ids=groups), 30)  # 90 samples, 9 epochs
    assert all(len({groups[i] for i, _ in batch}) == 1 for batch in batches)
    counts = torch.bincount(torch.tensor([i for batch in batches for i, _ in batch]), minlength=10)
    assert counts.max() - counts.min() <= 1 + 3  # each image once per epoch, up to the leftovers of one batch
    assert counts.min() >= 8


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"size": 3, "batch_size": 4}, "fewer than data.batch_size=4"),
        ({"size": 10, "batch_size": 5, "world_size": 2}, "must be a positive multiple of the number of processes (2)"),
        ({"size": 10, "batch_size": 2, "group_ids": [0, 1]}, "group_ids has 2 entries for 10 images"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainingBatchSampler(seed=0, **kwargs)


def test_dataset_augmentation_follows_the_given_seed(cache_dir, compose_cfg):
    from detector.cli import build_datasets

    train_set, _ = build_datasets(compose_cfg(["debug=smoke", f"data.cache_dir={cache_dir}"]).data)
    first, again = train_set[(3, 11)], train_set[(3, 11)]
    torch.testing.assert_close(first[0], again[0], rtol=0, atol=0)
    torch.testing.assert_close(first[1]["boxes"], again[1]["boxes"], rtol=0, atol=0)
    flips = {tuple(train_set[(3, seed)][1]["boxes"][0].tolist()) for seed in range(12)}
    assert len(flips) == 2  # flip_prob 0.5: both the flipped and the original box occur over 12 seeds
