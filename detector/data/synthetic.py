"""The embedded dataset: shapes on textured backgrounds, written once as JPEG files + COCO JSON.

A real little detection problem rather than a toy: six classes that differ only by shape (colours
are random and shared by all classes), objects from `min_object_size` to `max_object_size` pixels
so that COCO's small, medium and large ranges all occur, 1–15 objects per image, partial
occlusions (each object keeps at least `min_visible` of its pixels), and noisy, textured,
cluttered backgrounds. Boxes enclose the visible pixels; `area` is the box area w·h (there are no
masks, and pycocotools gives detections that same area), which puts about 45 % / 45 % / 10 % of the
objects in COCO's small / medium / large ranges with the default sizes.

Everything follows from the arguments, so the cache folder is named by their hash; it is
written to a temporary folder and renamed into place, so concurrent writers cannot corrupt it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from detector.data.coco import CocoSplits

CLASSES = ("circle", "square", "triangle", "star", "cross", "ring")
GENERATOR_VERSION = 1


def prepare_synthetic_coco(
    cache_dir: str,
    num_train: int = 3000,
    num_val: int = 200,
    image_size: int = 256,
    min_object_size: int = 10,
    max_object_size: int = 128,
    max_objects: int = 15,
    min_visible: float = 0.6,
    seed: int = 0,
) -> CocoSplits:
    """Generate the dataset into `cache_dir` if it is not there yet; return its COCO paths."""
    params = dict(
        num_train=num_train,
        num_val=num_val,
        image_size=image_size,
        min_object_size=min_object_size,
        max_object_size=max_object_size,
        max_objects=max_objects,
        min_visible=min_visible,
        seed=seed,
        version=GENERATOR_VERSION,
    )
    if num_train < 1 or num_val < 1 or image_size < 32 or max_objects < 1:
        raise ValueError(
            f"synthetic data needs num_train, num_val, max_objects >= 1 and image_size >= 32, got {params}"
        )
    if not 1 <= min_object_size <= max_object_size <= image_size:
        raise ValueError(
            "synthetic data needs 1 <= min_object_size <= max_object_size <= image_size, got "
            f"{min_object_size}, {max_object_size}, {image_size}"
        )

    def write(staging: Path) -> None:
        for split, count, split_seed in (("train", num_train, seed * 2), ("val", num_val, seed * 2 + 1)):
            _write_split(staging, split, count, np.random.default_rng([split_seed, GENERATOR_VERSION]), params)

    return coco_paths(write_once(cache_dir, "shapes", params, write))


def coco_paths(root: Path) -> CocoSplits:
    return CocoSplits(
        train_ann=str(root / "annotations" / "train.json"),
        train_dir=str(root / "train"),
        val_ann=str(root / "annotations" / "val.json"),
        val_dir=str(root / "val"),
    )


def write_once(cache_dir: str, prefix: str, params: dict, write) -> Path:
    """`cache_dir/prefix-HASH` (HASH of `params`), made by `write(staging folder)` the first time:
    written into a temporary folder and renamed into place, so concurrent writers cannot corrupt it."""
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(cache_dir).expanduser() / f"{prefix}-{digest}"
    if not (root / "done").exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root.parent))
        try:
            write(staging)
            (staging / "params.json").write_text(json.dumps(params, indent=1))
            (staging / "done").touch()
            try:
                os.rename(staging, root)
            except OSError:  # another process finished first; its copy is identical
                if not (root / "done").exists():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return root


def write_coco_split(root: Path, split: str, rendered, categories: list[dict], description: str, params: dict) -> None:
    """Save `rendered`, (image, [(label, xyxy box)]) pairs for the image ids 1, 2, …, as
    `root/split/NNNNNN.jpg` and `root/annotations/split.json` (category id = label + 1)."""
    (root / split).mkdir(parents=True)
    (root / "annotations").mkdir(exist_ok=True)
    images, annotations = [], []
    for image_id, (image, objects) in enumerate(rendered, start=1):
        file_name = f"{image_id:06d}.jpg"
        image.save(root / split / file_name, quality=90)
        images.append({"id": image_id, "file_name": file_name, "width": image.width, "height": image.height})
        for label, (x0, y0, x1, y1) in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {"description": description, "params": params},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    (root / "annotations" / f"{split}.json").write_text(json.dumps(coco))


def _write_split(root: Path, split: str, count: int, rng: np.random.Generator, params: dict) -> None:
    rendered = (render_image(rng, params["image_size"], params) for _ in range(count))
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)]
    write_coco_split(root, split, rendered, categories, f"synthetic shapes ({split})", params)


def render_image(rng: np.random.Generator, size: int, params: dict) -> tuple[Image.Image, list]:
    """One image and its objects as (label, xyxy box around the visible pixels)."""
    canvas = background(rng, size)
    owner = np.full((size, size), -1, dtype=np.int32)  # which object each pixel shows
    drawn: list[tuple[int, int]] = []  # (label, full pixel count)
    target = int(rng.integers(1, params["max_objects"] + 1))
    for _ in range(target * 6):
        if len(drawn) == target:
            break
        label = int(rng.integers(len(CLASSES)))
        extent = math.exp(rng.uniform(math.log(params["min_object_size"]), math.log(params["max_object_size"])))
        mask = _shape_mask(rng, CLASSES[label], extent, size)
        placed = None if mask is None else occlude(owner, drawn, mask, label, params["min_visible"])
        if placed is None:
            continue
        owner = placed
        paint(rng, canvas, mask)
    return finish_image(rng, canvas, owner, drawn)


def occlude(
    owner: np.ndarray, drawn: list[tuple[int, int]], mask: np.ndarray, label: int, min_visible: float
) -> np.ndarray | None:
    """`owner` (which object each pixel shows) with `mask` drawn over it as object len(drawn), and
    (label, its pixel count) appended to `drawn`; None, and nothing appended, when that would leave
    an earlier object less than `min_visible` of its pixels."""
    trial = owner.copy()
    trial[mask] = len(drawn)
    visible = np.bincount(trial[trial >= 0], minlength=len(drawn) + 1)[: len(drawn)]
    if any(v < min_visible * full for v, (_, full) in zip(visible, drawn)):
        return None
    drawn.append((label, int(mask.sum())))
    return trial


def finish_image(
    rng: np.random.Generator, canvas: np.ndarray, owner: np.ndarray, drawn: list[tuple[int, int]]
) -> tuple[Image.Image, list]:
    """Sensor noise and, on 30 % of the images, a slight blur; each object's box around its visible pixels."""
    canvas += rng.normal(0, rng.uniform(4, 14), canvas.shape)
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.3, 1.0)))
    objects = []
    for index, (label, _) in enumerate(drawn):
        ys, xs = np.nonzero(owner == index)
        objects.append((label, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)))
    return image, objects


def background(rng: np.random.Generator, size: int, max_strokes: int = 9) -> np.ndarray:
    """Smooth colour field + fine texture + 0–`max_strokes` clutter strokes that belong to no class."""
    cells = int(rng.integers(2, 9))
    field = Image.fromarray(rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
    canvas = np.asarray(field, dtype=np.float32) * rng.uniform(0.4, 1.0)
    texture = Image.fromarray(rng.integers(0, 256, (size // 4, size // 4), dtype=np.uint8)).resize(
        (size, size), Image.BILINEAR
    )
    canvas += (np.asarray(texture, dtype=np.float32)[..., None] - 128) * rng.uniform(0.1, 0.4)
    clutter = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(clutter)
    alpha = Image.new("L", (size, size))
    alpha_draw = ImageDraw.Draw(alpha)
    for _ in range(int(rng.integers(0, max_strokes + 1))):
        points = [tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(int(rng.integers(2, 5)))]
        colour, width = tuple(int(c) for c in rng.integers(0, 256, 3)), int(rng.integers(1, 4))
        draw.line(points, fill=colour, width=width)
        alpha_draw.line(points, fill=255, width=width)
    keep = np.asarray(alpha)[..., None] > 0
    return np.where(keep, np.asarray(clutter, dtype=np.float32), canvas)


def _shape_mask(rng: np.random.Generator, shape: str, extent: float, size: int) -> np.ndarray | None:
    """Boolean mask of one shape whose bounding extent is about `extent` pixels, or None if it cannot fit."""
    aspect = math.exp(rng.uniform(-0.35, 0.35)) if shape in ("square", "cross", "circle", "ring") else 1.0
    half_w, half_h = extent / 2 * math.sqrt(aspect), extent / 2 / math.sqrt(aspect)
    if 2 * max(half_w, half_h) >= size:
        return None
    cx = rng.uniform(half_w, size - half_w)
    cy = rng.uniform(half_h, size - half_h)
    angle = rng.uniform(0, 2 * math.pi) if shape in ("triangle", "star") else rng.uniform(-0.3, 0.3)
    image = Image.new("L", (size, size))
    draw = ImageDraw.Draw(image)
    if shape in ("circle", "ring"):
        draw.ellipse([cx - half_w, cy - half_h, cx + half_w, cy + half_h], fill=255)
        if shape == "ring":
            inner = rng.uniform(0.45, 0.7)
            draw.ellipse([cx - half_w * inner, cy - half_h * inner, cx + half_w * inner, cy + half_h * inner], fill=0)
    else:
        draw.polygon(_polygon(shape, rng, half_w, half_h, angle, cx, cy), fill=255)
    mask = np.asarray(image) > 127
    return mask if mask.sum() >= 12 else None


def _polygon(
    shape: str, rng: np.random.Generator, half_w: float, half_h: float, angle: float, cx: float, cy: float
) -> list[tuple[float, float]]:
    if shape == "square":
        unit = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    elif shape == "triangle":
        unit = [(math.cos(angle + k * 2 * math.pi / 3), math.sin(angle + k * 2 * math.pi / 3)) for k in range(3)]
        return [(cx + half_w * x, cy + half_h * y) for x, y in unit]
    elif shape == "star":
        inner = rng.uniform(0.35, 0.5)
        unit = [
            (
                (1 if k % 2 == 0 else inner) * math.cos(angle + k * math.pi / 5),
                (1 if k % 2 == 0 else inner) * math.sin(angle + k * math.pi / 5),
            )
            for k in range(10)
        ]
        return [(cx + half_w * x, cy + half_h * y) for x, y in unit]
    else:  # cross: a plus sign with arms a third of its extent wide
        t = rng.uniform(0.25, 0.4)
        unit = [
            (-t, -1),
            (t, -1),
            (t, -t),
            (1, -t),
            (1, t),
            (t, t),
            (t, 1),
            (-t, 1),
            (-t, t),
            (-1, t),
            (-1, -t),
            (-t, -t),
        ]
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + half_w * x * cos - half_h * y * sin, cy + half_w * x * sin + half_h * y * cos) for x, y in unit]


def paint(rng: np.random.Generator, canvas: np.ndarray, mask: np.ndarray) -> None:
    """Fill `mask` with a random colour, shaded by a linear gradient and speckled."""
    ys, xs = np.nonzero(mask)
    colour = rng.integers(0, 256, 3).astype(np.float32)
    direction = rng.normal(size=2)
    ramp = (xs - xs.mean()) * direction[0] + (ys - ys.mean()) * direction[1]
    ramp = ramp / (np.abs(ramp).max() + 1e-6) * rng.uniform(0, 40)
    canvas[ys, xs] = colour + ramp[:, None] + rng.normal(0, rng.uniform(0, 12), (len(xs), 1))
