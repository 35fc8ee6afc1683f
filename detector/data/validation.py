"""Checks of a COCO-format dataset: each problem with its file, image or annotation id, and what
training does about it. `detector validate-data` runs every check (decoding every image);
training runs the cheap ones (the JSON and the files' existence) before it starts."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from detector.data.images import read_rgb

# kind: (severity, what training does). "error" stops training before it starts.
ACTIONS = {
    "json_syntax": ("error", "training cannot start: fix the file at the line and column given"),
    "structure": ("error", "training cannot start: a required key is missing or has the wrong type"),
    "no_categories": ("error", "training cannot start: a detection dataset needs categories"),
    "duplicate_image_id": ("error", "training cannot start: annotations could not be told apart"),
    "duplicate_category_id": ("error", "training cannot start: labels could not be told apart"),
    "duplicate_annotation_id": ("error", "training cannot start: pycocotools keeps one annotation per id"),
    "no_usable_image": ("error", "training cannot start: nothing is left to train on"),
    "missing_file": ("skip", "image left out"),
    "unreadable_image": ("skip", "image left out (found at run time: replaced by another image, counted)"),
    "size_mismatch": ("skip", "image left out: its boxes would not match its pixels"),
    "unknown_category": ("skip", "annotation dropped"),
    "orphan_annotation": ("skip", "annotation dropped"),
    "invalid_box": ("skip", "annotation dropped"),
    "empty_box": ("skip", "annotation dropped"),
    "box_off_image": ("skip", "annotation dropped: less than a pixel of it is inside the image"),
    "box_outside_image": ("fix", "box clipped to the image"),
    "missing_area": ("fix", "area set to the box's width × height (COCOeval needs it)"),
    "converted_image": ("fix", "converted to 8-bit RGB"),
    "exif_orientation": ("fix", "pixels rotated as EXIF says; boxes describe the displayed image"),
    "no_annotations": ("note", "kept as a negative image"),
    "crowd": ("note", "kept as an ignore region"),
}


class DatasetError(ValueError):
    """A dataset training cannot use; the message lists every blocking problem."""


@dataclass
class Problem:
    kind: str
    where: str  # file
    message: str
    image_id: int | None = None
    annotation_id: int | None = None

    @property
    def severity(self) -> str:
        return ACTIONS[self.kind][0]

    def __str__(self) -> str:
        ids = "".join(
            f" {name} {value}"
            for name, value in (("image", self.image_id), ("annotation", self.annotation_id))
            if value is not None
        )
        return f"[{self.severity}] {self.kind}:{ids} in {self.where}: {self.message} → {ACTIONS[self.kind][1]}"


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)

    def add(self, kind: str, where: str, message: str, image_id=None, annotation_id=None) -> None:
        self.problems.append(Problem(kind, str(where), message, image_id, annotation_id))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def skipped_images(self) -> set:
        return {p.image_id for p in self.problems if p.severity == "skip" and p.annotation_id is None}

    def dropped_annotations(self) -> set:
        return {p.annotation_id for p in self.problems if p.severity == "skip" and p.annotation_id is not None}

    def summary(self) -> str:
        counts = Counter(p.kind for p in self.problems)
        lines = ["| problem | severity | count | what training does |", "|---|---|---|---|"]
        for kind, (severity, action) in ACTIONS.items():
            if counts[kind]:
                lines.append(f"| {kind} | {severity} | {counts[kind]} | {action} |")
        return "\n".join(lines) if counts else "no problems found"


def load_json(ann_file: str | Path, report: Report) -> dict | None:
    try:
        text = Path(ann_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        report.add("json_syntax", ann_file, f"cannot be read: {error}")
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        report.add("json_syntax", ann_file, f"invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}")
        return None
    if not isinstance(data, dict):
        report.add("structure", ann_file, f"the top level must be an object, got {type(data).__name__}")
        return None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            report.add("structure", ann_file, f"'{key}' must be a list (got {type(data.get(key)).__name__})")
    return data if not report.errors else None


def check_annotations(data: dict, ann_file: str | Path, report: Report) -> None:
    """Everything that can be checked from the JSON alone."""
    categories = _unique_ids(data["categories"], "category", "duplicate_category_id", ann_file, report)
    for category in categories.values():
        if not isinstance(category.get("name"), str):
            report.add("structure", ann_file, f"category {category['id']} needs a 'name'")
    if not categories:
        report.add("no_categories", ann_file, "'categories' is empty or has no valid entries")
    images = _unique_ids(data["images"], "image", "duplicate_image_id", ann_file, report)
    for image in images.values():
        if not isinstance(image.get("file_name"), str) or not all(_positive(image.get(k)) for k in ("width", "height")):
            report.add(
                "structure", ann_file, "an image needs 'file_name' and positive 'width' and 'height'", image.get("id")
            )
    annotated, annotation_ids = set(), set()
    for ann in data["annotations"]:
        if not isinstance(ann, dict) or not isinstance(ann.get("id"), int):
            report.add("structure", ann_file, f"every annotation needs an integer 'id', got {ann!r:.80}")
            continue
        ann_id, image_id = ann["id"], ann.get("image_id")
        if ann_id in annotation_ids:
            report.add(
                "duplicate_annotation_id", ann_file, f"annotation id {ann_id} appears more than once", image_id, ann_id
            )
        annotation_ids.add(ann_id)
        image = images.get(image_id)
        if image is None:
            report.add("orphan_annotation", ann_file, f"image_id {image_id} is not in 'images'", image_id, ann_id)
            continue
        if ann.get("category_id") not in categories:
            report.add(
                "unknown_category",
                ann_file,
                f"category_id {ann.get('category_id')} is not in 'categories'",
                image_id,
                ann_id,
            )
            continue
        box = ann.get("bbox")
        if not (
            isinstance(box, list)
            and len(box) == 4
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)
        ):
            report.add(
                "invalid_box", ann_file, f"bbox must be 4 finite numbers [x, y, w, h], got {box}", image_id, ann_id
            )
            continue
        x, y, w, h = box
        if w <= 0 or h <= 0:
            report.add("empty_box", ann_file, f"bbox {box} has zero or negative width or height", image_id, ann_id)
            continue
        width, height = image.get("width"), image.get("height")
        if (
            _positive(width)
            and _positive(height)
            and (min(x + w, width) - max(x, 0) < 1 or min(y + h, height) - max(y, 0) < 1)
        ):
            report.add(
                "box_off_image", ann_file, f"bbox {box} is not inside the {width}×{height} image", image_id, ann_id
            )
            continue
        if _positive(width) and _positive(height) and (x < 0 or y < 0 or x + w > width or y + h > height):
            report.add("box_outside_image", ann_file, f"bbox {box} leaves the {width}×{height} image", image_id, ann_id)
        if not _positive(ann.get("area")) and not ann.get("iscrowd"):
            report.add("missing_area", ann_file, f"area is {ann.get('area')!r}", image_id, ann_id)
        if ann.get("iscrowd"):
            report.add("crowd", ann_file, "crowd region", image_id, ann_id)
        annotated.add(image_id)
    for image_id in images.keys() - annotated:
        report.add("no_annotations", ann_file, "no usable annotation", image_id)


def check_files(data: dict, image_dir: str | Path, report: Report, decode: bool = True) -> None:
    """Existence of every image file; with `decode`, that it decodes, its mode, orientation and size."""
    for image in data["images"]:
        name = image.get("file_name") if isinstance(image, dict) else None
        if not isinstance(name, str):
            continue
        path = Path(image_dir) / name
        if not path.is_file():
            report.add("missing_file", path, "file not found", image.get("id"))
            continue
        if not decode:
            continue
        try:
            pixels, changes = read_rgb(path)
        except (OSError, ValueError, SyntaxError) as error:
            report.add("unreadable_image", path, f"cannot be decoded: {error}", image.get("id"))
            continue
        for change in changes:
            report.add(
                "exif_orientation" if change.startswith("EXIF") else "converted_image", path, change, image.get("id")
            )
        height, width = pixels.shape[:2]
        if (image.get("width"), image.get("height")) != (width, height):
            report.add(
                "size_mismatch",
                path,
                f"the JSON says {image.get('width')}×{image.get('height')}, the file is {width}×{height}",
                image.get("id"),
            )


def validate(ann_file: str | Path, image_dir: str | Path, decode: bool = True) -> tuple[Report, dict | None]:
    """(report, the dataset without skipped images and dropped annotations, or None on errors)."""
    report = Report()
    data = load_json(ann_file, report)
    if data is None:
        return report, None
    check_annotations(data, ann_file, report)
    check_files(data, image_dir, report, decode)  # also after a blocking problem: every problem in one pass
    if report.errors:
        return report, None
    skipped, dropped = report.skipped_images(), report.dropped_annotations()
    usable = [image for image in data["images"] if image["id"] not in skipped]
    if not usable:
        report.add("no_usable_image", ann_file, f"all {len(data['images'])} images are left out")
        return report, None
    kept = {image["id"] for image in usable}
    annotations = [a for a in data["annotations"] if a.get("id") not in dropped and a.get("image_id") in kept]
    missing_area = {p.annotation_id for p in report.problems if p.kind == "missing_area"}
    annotations = [{**a, "area": a["bbox"][2] * a["bbox"][3]} if a["id"] in missing_area else a for a in annotations]
    return report, {**data, "images": usable, "annotations": annotations}


def _unique_ids(entries: list, name: str, duplicate_kind: str, ann_file, report: Report) -> dict:
    by_id = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), int):
            report.add("structure", ann_file, f"every {name} needs an integer 'id', got {entry!r:.80}")
            continue
        if entry["id"] in by_id:
            report.add(
                duplicate_kind,
                ann_file,
                f"{name} id {entry['id']} appears more than once",
                entry["id"] if name == "image" else None,
            )
        by_id[entry["id"]] = entry
    return by_id


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0
