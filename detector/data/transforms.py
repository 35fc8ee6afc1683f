"""albumentations pipelines: resize by shortest/longest side, horizontal flip, normalisation."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ResizeShortestEdge(A.DualTransform):
    """Scale so the short side is one of `short_sides` (picked at random) unless the long side
    would exceed `max_size`, in which case the long side is `max_size` (the detectron/FL recipe:
    800 and 1333). albumentations' Smallest/LongestMaxSize always scale up to their size, so the
    pair cannot express this rule."""

    def __init__(self, short_sides: Sequence[int], max_size: int, p: float = 1.0):
        super().__init__(p=p)
        if not short_sides or min(short_sides) < 1 or max_size < 1:
            raise ValueError(f"resize sizes must be positive, got short sides {list(short_sides)}, max_size {max_size}")
        self.short_sides = [int(s) for s in short_sides]
        self.max_size = int(max_size)

    def get_params_dependent_on_data(self, params, data):
        height, width = params["shape"][:2]
        short = self.py_random.choice(self.short_sides)
        scale = min(short / min(height, width), self.max_size / max(height, width))
        return {"size": (max(1, round(height * scale)), max(1, round(width * scale)))}

    def apply(self, img, size, **params):
        if img.shape[:2] == size:
            return img
        return cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)

    def apply_to_bboxes(self, bboxes, **params):
        return bboxes  # albumentations keeps boxes normalised to [0, 1]: a resize leaves them as they are

    def get_transform_init_args_names(self):
        return ("short_sides", "max_size")


def _compose(steps: list) -> A.Compose:
    return A.Compose(
        [*steps, A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), ToTensorV2()],
        bbox_params=A.BboxParams(
            format="pascal_voc", label_fields=["labels", "iscrowd"], clip=True, filter_invalid_bboxes=True
        ),
    )


def train_transforms(min_sizes: Sequence[int], max_size: int, flip_prob: float = 0.5) -> A.Compose:
    """Random short side from `min_sizes` (one value: fixed scale), horizontal flip with `flip_prob`."""
    if not 0.0 <= flip_prob <= 1.0:
        raise ValueError(f"data.flip_prob must be in [0, 1], got {flip_prob}")
    return _compose([ResizeShortestEdge(min_sizes, max_size), A.HorizontalFlip(p=flip_prob)])


def eval_transforms(min_size: int, max_size: int) -> A.Compose:
    return _compose([ResizeShortestEdge([min_size], max_size)])
