"""COCO-format detection data: every dataset, real COCO and the embedded one, is read here."""

from __future__ import annotations

import contextlib
import io
import logging
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from detector.data.images import read_rgb
from detector.data.validation import DatasetError, validate

log = logging.getLogger(__name__)

COCO_LAYOUT_HELP = (
    "Lay out COCO 2017 as ROOT/annotations/instances_{train,val}2017.json and "
    "ROOT/{train,val}2017/*.jpg and pass data=coco data.root=ROOT (or set COCO_ROOT); for another "
    "COCO-format dataset pass data=coco_custom data.train_ann=… data.train_dir=… "
    "data.val_ann=… data.val_dir=…"
)


class CocoSplits(NamedTuple):
    train_ann: str
    train_dir: str
    val_ann: str
    val_dir: str


def coco_results(detections: dict, image_id: int, scale: tuple[float, float], category_ids) -> list[dict]:
    """One image's detections as COCO result records in the image file's pixels: the boxes (xyxy,
    in the network input's pixels) times `scale` = (sx, sy) as [x, y, w, h], and the dataset's
    `category_ids[label]`."""
    sx, sy = scale
    boxes = detections["boxes"].detach().float().cpu() * torch.tensor([sx, sy, sx, sy])
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    return [
        {
            "image_id": image_id,
            "category_id": category_ids[label],
            "bbox": box,
            "score": score,
            "area": box[2] * box[3],
            "iscrowd": 0,
        }
        for box, score, label in zip(xywh, detections["scores"].tolist(), detections["labels"].tolist())
    ]


def coco_splits(train_ann: str, train_dir: str, val_ann: str, val_dir: str) -> CocoSplits:
    """The paths of an existing COCO-format dataset (checked by `check_split` when used)."""
    return CocoSplits(train_ann, train_dir, val_ann, val_dir)


def check_split(splits: CocoSplits, split: str) -> tuple[str, str]:
    """(annotation file, image folder) of `split` ("train" or "val"), naming any that does not exist."""
    ann, image_dir = getattr(splits, f"{split}_ann"), getattr(splits, f"{split}_dir")
    for key, path, exists in (
        (f"{split}_ann", ann, Path(ann).is_file()),
        (f"{split}_dir", image_dir, Path(image_dir).is_dir()),
    ):
        if not exists:
            kind = "annotation file" if key.endswith("_ann") else "image folder"
            raise FileNotFoundError(f"data.{key}: {kind} not found: {Path(path).resolve()}. {COCO_LAYOUT_HELP}")
    return ann, image_dir


def checked_coco(ann_file: str, image_dir: str) -> COCO:
    """pycocotools' COCO of the usable part of a dataset, after the cheap checks of
    `detector.data.validation` (the JSON, and that every image file exists): blocking problems
    raise a DatasetError listing them; skipped images, dropped or clipped boxes are logged."""
    report, data = validate(ann_file, image_dir, decode=False)
    if report.errors:
        listed = "\n  ".join(str(p) for p in report.errors[:20])
        more = f"\n  … and {len(report.errors) - 20} more" if len(report.errors) > 20 else ""
        raise DatasetError(
            f"{ann_file} cannot be used for training:\n  {listed}{more}\nFull report: "
            f"detector validate-data {ann_file} {image_dir}"
        )
    if any(p.severity in ("skip", "fix") for p in report.problems):
        log.warning(
            "%s: %d image(s) left out, %d annotation(s) dropped; what was done about each problem:\n%s",
            ann_file,
            len(report.skipped_images()),
            len(report.dropped_annotations()),
            report.summary(),
        )
        shown: Counter = Counter()
        for problem in report.problems:
            if problem.severity in ("skip", "fix"):
                shown[problem.kind] += 1
                if shown[problem.kind] <= 10:
                    log.info("%s", problem)
                elif shown[problem.kind] == 11:
                    log.info(
                        "… more %s: detector validate-data %s %s lists them all",
                        problem.kind,
                        ann_file,
                        image_dir,
                    )
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class CocoDetection(Dataset):
    """Images and boxes of one COCO-format split.

    Category ids map to contiguous labels 0..K−1 in increasing id order (`category_ids[label]`
    maps back). Boxes are clipped to the image (the checks before training drop, count and log
    those with less than a pixel inside, see `detector.data.validation`).
    Crowd boxes are kept with `iscrowd` = True (the matcher's `crowd` option says what the
    anchors on them become). With `filter_empty`, images without any non-crowd box are left out
    (counted and logged), as Detectron, detectron2 and torchvision do for training: about 1k of
    COCO train2017's 118k images.

    Each item is (image [3, H, W] float tensor, target) with target keys "boxes" [G, 4] xyxy in
    network-input pixels, "labels" [G], "iscrowd" [G], "image_id", "orig_size" (h, w) of the
    file, "size" (h, w) after the transforms.
    """

    def __init__(self, ann_file: str, image_dir: str, transforms, filter_empty: bool = False):
        self.ann_file = ann_file
        self.image_dir = Path(image_dir)
        self.coco = checked_coco(ann_file, image_dir)
        self.transforms = transforms
        self.category_ids = sorted(self.coco.getCatIds())
        self.class_names = [self.coco.cats[c]["name"] for c in self.category_ids]
        self.label_of = {cat: label for label, cat in enumerate(self.category_ids)}
        self.image_ids = sorted(self.coco.getImgIds())
        if filter_empty:
            kept = [i for i in self.image_ids if any(not a.get("iscrowd", 0) for a in self.coco.imgToAnns.get(i, []))]
            log.info(
                "%s: %d of %d images have no non-crowd box and are left out of training (data.filter_empty)",
                ann_file,
                len(self.image_ids) - len(kept),
                len(self.image_ids),
            )
            if not kept:
                raise ValueError(
                    f"{ann_file}: no image has a non-crowd box, so data.filter_empty=true leaves "
                    "nothing to train on; annotate the images or set data.filter_empty=false"
                )
            self.image_ids = kept

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
        image_id, image, failed = self._read(index)
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
        if failed:
            target["replaces"] = failed  # ids of the images that could not be used, counted by the trainer
        return out["image"], target

    def _read(self, index: int) -> tuple[int, np.ndarray, list[int]]:
        """(image id, pixels, ids that failed): a file that cannot be decoded, or whose size is not
        the one in the JSON (its boxes would not match), is logged and replaced by the next image.
        The evaluator skips such substitutes (scored at their own turn) and leaves the unusable
        image out of the COCO evaluation."""
        failed = []
        for attempt in range(len(self)):
            image_id = self.image_ids[(index + attempt) % len(self)]
            info = self.coco.imgs[image_id]
            path = self.image_dir / info["file_name"]
            try:
                pixels = read_rgb(path)[0]
            except (OSError, ValueError, SyntaxError) as error:
                log.warning("image %s (%s) cannot be decoded (%s); replaced by the next image", image_id, path, error)
                failed.append(image_id)
                continue
            if pixels.shape[:2] != (info["height"], info["width"]):
                log.warning(
                    "image %s (%s) is %d×%d but %s says %d×%d; replaced by the next image",
                    image_id,
                    path,
                    pixels.shape[1],
                    pixels.shape[0],
                    self.ann_file,
                    info["width"],
                    info["height"],
                )
                failed.append(image_id)
                continue
            return image_id, pixels, failed
        raise OSError(f"{self.ann_file}: none of the {len(self)} images in {self.image_dir} can be used")

    def _annotations(self, image_id: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        boxes, labels, crowd = [], [], []
        for ann in self.coco.imgToAnns.get(image_id, []):
            x, y, w, h = ann["bbox"]
            boxes.append([max(0.0, x), max(0.0, y), min(float(width), x + w), min(float(height), y + h)])
            labels.append(self.label_of[ann["category_id"]])
            crowd.append(bool(ann.get("iscrowd", 0)))
        return (
            np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            np.asarray(labels, dtype=np.int64),
            np.asarray(crowd, dtype=bool),
        )
