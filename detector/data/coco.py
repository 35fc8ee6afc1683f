"""COCO-format detection data: every dataset, real COCO and the embedded one, is read here."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

COCO_LAYOUT_HELP = ("Lay out COCO 2017 as ROOT/annotations/instances_{train,val}2017.json and "
                    "ROOT/{train,val}2017/*.jpg and pass data=coco data.root=ROOT (or set COCO_ROOT); for another "
                    "COCO-format dataset pass data=coco_custom data.train_ann=… data.train_dir=… "
                    "data.val_ann=… data.val_dir=…")


class CocoSplits(NamedTuple):
    train_ann: str
    train_dir: str
    val_ann: str
    val_dir: str


def coco_splits(train_ann: str, train_dir: str, val_ann: str, val_dir: str) -> CocoSplits:
    """The paths of an existing COCO-format dataset (checked by `check_split` when used)."""
    return CocoSplits(train_ann, train_dir, val_ann, val_dir)


def check_split(splits: CocoSplits, split: str) -> tuple[str, str]:
    """(annotation file, image folder) of `split` ("train" or "val"), naming any that does not exist."""
    ann, image_dir = getattr(splits, f"{split}_ann"), getattr(splits, f"{split}_dir")
    for key, path, exists in ((f"{split}_ann", ann, Path(ann).is_file()), (f"{split}_dir", image_dir, Path(image_dir).is_dir())):
        if not exists:
            kind = "annotation file" if key.endswith("_ann") else "image folder"
            raise FileNotFoundError(f"data.{key}: {kind} not found: {Path(path).resolve()}. {COCO_LAYOUT_HELP}")
    return ann, image_dir


def load_coco(ann_file: str) -> COCO:
    """pycocotools' COCO without its progress prints."""
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(ann_file)


class CocoDetection(Dataset):
    """Images and boxes of one COCO-format split.

    Category ids map to contiguous labels 0..K−1 in increasing id order (`category_ids[label]`
    maps back). Boxes are clipped to the image; boxes with no area left are dropped and counted.
    Crowd boxes are kept with `iscrowd` = True (the criterion treats them as ignore regions).

    Each item is (image [3, H, W] float tensor, target) with target keys "boxes" [G, 4] xyxy in
    network-input pixels, "labels" [G], "iscrowd" [G], "image_id", "orig_size" (h, w) of the
    file, "size" (h, w) after the transforms.
    """

    def __init__(self, ann_file: str, image_dir: str, transforms):
        self.ann_file = ann_file
        self.image_dir = Path(image_dir)
        self.coco = load_coco(ann_file)
        self.transforms = transforms
        self.category_ids = sorted(self.coco.getCatIds())
        self.class_names = [self.coco.cats[c]["name"] for c in self.category_ids]
        self.label_of = {cat: label for label, cat in enumerate(self.category_ids)}
        self.image_ids = sorted(self.coco.getImgIds())
        self.dropped_boxes = 0
        if not self.category_ids:
            raise ValueError(f"{ann_file}: 'categories' is empty; a detection dataset needs at least one category")

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def __len__(self) -> int:
        return len(self.image_ids)

    def aspect_ratio_groups(self) -> list[int]:
        """1 for landscape (width ≥ height), 0 for portrait, from the JSON sizes (no decoding)."""
        return [int(self.coco.imgs[i].get("width", 1) >= self.coco.imgs[i].get("height", 1)) for i in self.image_ids]

    def __getitem__(self, item: int | tuple[int, int]):
        """`dataset[index]`, or `dataset[(index, seed)]` to seed the random augmentation (training)."""
        index, seed = item if isinstance(item, tuple) else (item, None)
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        with Image.open(self.image_dir / info["file_name"]) as file:
            image = np.asarray(file.convert("RGB"))
        height, width = image.shape[:2]
        boxes, labels, crowd = self._annotations(image_id, width, height)
        if seed is not None:
            self.transforms.set_random_seed(seed)
        out = self.transforms(image=image, bboxes=boxes, labels=labels, iscrowd=crowd)
        target = {
            "boxes": torch.as_tensor(np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(out["labels"], dtype=np.int64)),
            "iscrowd": torch.as_tensor(np.asarray(out["iscrowd"], dtype=bool)),
            "image_id": image_id,
            "orig_size": (height, width),
            "size": tuple(out["image"].shape[-2:]),
        }
        return out["image"], target

    def _annotations(self, image_id: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        boxes, labels, crowd = [], [], []
        for ann in self.coco.imgToAnns.get(image_id, []):
            x, y, w, h = ann["bbox"]
            x0, y0 = max(0.0, x), max(0.0, y)
            x1, y1 = min(float(width), x + w), min(float(height), y + h)
            if x1 - x0 < 1 or y1 - y0 < 1:
                self.dropped_boxes += 1
                log.debug("%s: annotation %s of image %s has no area inside the image; dropped",
                          self.ann_file, ann.get("id"), image_id)
                continue
            boxes.append([x0, y0, x1, y1])
            labels.append(self.label_of[ann["category_id"]])
            crowd.append(bool(ann.get("iscrowd", 0)))
        return (np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64),
                np.asarray(crowd, dtype=bool))
