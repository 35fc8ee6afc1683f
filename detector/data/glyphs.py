"""A COCO-like embedded dataset: 80 classes of glyphs and drawn shapes, in COCO's proportions.

What the Focal Loss and GHM papers study needs COCO's imbalance, which six shape classes cannot
give. This generator keeps the shapes dataset's textured, cluttered backgrounds, random colours
and occlusion rule (`detector.data.synthetic`), and draws its objects like COCO's:
- **80 classes that differ in shape**: 50 glyphs (A–Z, 1–9 and 15 lower-case letters unlike their
  capitals, without b/d and p/q mirror pairs, which a horizontal flip would confuse) rendered from
  Pillow's embedded scalable font, and 30 drawn shapes unlike any glyph (regular polygons, stars,
  hollow outlines, a trefoil, a house, a kite, …). Orientation-sensitive classes turn by ±15° at most.
- **A long-tailed class frequency**: P(class of rank r) ∝ r^(−`class_exponent`) (1.0: the most
  frequent class about 20 % of the objects, the rarest 0.25 %); which class has which rank
  follows from the seed.
- **Objects per image**: P(n) ∝ n^(−`count_exponent`) for n = 1 … `max_objects` (2.2, 30: 88 % of
  the images with 1–3 objects, a mean of 2.1, and 0.6 % past 20), before occlusion rejects some.
  COCO has more objects per image (7.3) on 5× the pixels; fewer objects keep the loss's imbalance
  COCO-like at 320 px: about 3.4 × 10^4 negative (anchor, class) elements per positive with the
  paper's anchors (1.6 gives a mean of 3.8 objects and 2.0 × 10^4).
- **Sizes**: the longer side log-uniform in [`min_object_size`, `max_object_size`] (11–280 at
  320 px), the large objects drawn first: 39 / 37 / 24 % of the boxes in COCO's small / medium /
  large ranges on a 300-image sample (COCO: 41 / 34 / 24).

Written once into `cache_dir/glyphs-HASH` like the shapes dataset, then read as any COCO dataset.
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from detector.data.coco import CocoSplits
from detector.data.synthetic import background, coco_paths, finish_image, occlude, paint, write_coco_split, write_once

GLYPHS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ") + tuple("123456789") + tuple("abefghijkmnprty")
SHAPES = (
    "triangle",
    "square",
    "pentagon",
    "hexagon",
    "heptagon",
    "octagon",
    "star4",
    "star5",
    "star6",
    "star8",
    "circle",
    "ring",
    "plus",
    "trefoil",
    "crescent",
    "arrow",
    "semicircle",
    "house",
    "kite",
    "bar",
    "hollow_triangle",
    "hollow_square",
    "hollow_hexagon",
    "hollow_star",
    "ellipse",
    "trapezoid",
    "parallelogram",
    "heart",
    "hourglass",
    "hollow_pentagon",
)
CLASSES = GLYPHS + SHAPES
GENERATOR_VERSION = 1
TURNS_FREELY = {
    "triangle",
    "square",
    "pentagon",
    "hexagon",
    "heptagon",
    "octagon",
    "star4",
    "star5",
    "star6",
    "star8",
    "circle",
    "ring",
    "trefoil",
    "hollow_triangle",
    "hollow_square",
    "hollow_pentagon",
    "hollow_hexagon",
    "hollow_star",
}
ELONGATED = {"bar": (3.0, 5.0), "ellipse": (2.2, 3.0)}  # aspect ranges of the long shapes
SMALL_TURN = math.radians(15)


def prepare_glyphs_coco(
    cache_dir: str,
    num_train: int = 4000,
    num_val: int = 500,
    image_size: int = 320,
    min_object_size: int = 11,
    max_object_size: int = 280,
    max_objects: int = 30,
    count_exponent: float = 2.2,
    class_exponent: float = 1.0,
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
        count_exponent=count_exponent,
        class_exponent=class_exponent,
        min_visible=min_visible,
        seed=seed,
        version=GENERATOR_VERSION,
    )
    if num_train < 1 or num_val < 1 or image_size < 64 or max_objects < 1:
        raise ValueError(f"glyph data needs num_train, num_val, max_objects >= 1 and image_size >= 64, got {params}")
    if not 4 <= min_object_size <= max_object_size < image_size:
        raise ValueError(
            "glyph data needs 4 <= min_object_size <= max_object_size < image_size, got "
            f"{min_object_size}, {max_object_size}, {image_size}"
        )
    if count_exponent < 0 or class_exponent < 0:
        raise ValueError(
            f"glyph data needs count_exponent and class_exponent >= 0, got {count_exponent}, {class_exponent}"
        )

    def write(staging: Path) -> None:
        frequencies = class_frequencies(len(CLASSES), class_exponent, seed)
        for split, count, split_seed in (("train", num_train, seed * 2), ("val", num_val, seed * 2 + 1)):
            rng = np.random.default_rng([split_seed, GENERATOR_VERSION, 80])
            _write_split(staging, split, count, rng, params, frequencies)

    return coco_paths(write_once(cache_dir, "glyphs", params, write))


def class_frequencies(num_classes: int, exponent: float, seed: int) -> np.ndarray:
    """P(class): rank r (1 = most frequent) has weight r^(−exponent); the ranks are a permutation
    of the classes drawn from `seed`."""
    weights = np.arange(1, num_classes + 1, dtype=np.float64) ** -exponent
    ranks = np.random.default_rng([seed, GENERATOR_VERSION, 1]).permutation(num_classes)
    return weights[ranks] / weights.sum()


def object_count_probabilities(max_objects: int, exponent: float) -> np.ndarray:
    """P(n) ∝ n^(−exponent), n = 1 … max_objects."""
    weights = np.arange(1, max_objects + 1, dtype=np.float64) ** -exponent
    return weights / weights.sum()


def _write_split(
    root: Path, split: str, count: int, rng: np.random.Generator, params: dict, frequencies: np.ndarray
) -> None:
    size = params["image_size"]
    counts = object_count_probabilities(params["max_objects"], params["count_exponent"])
    rendered = (render_image(rng, size, params, frequencies, counts) for _ in range(count))
    categories = [
        {"id": i + 1, "name": name, "supercategory": "glyph" if name in GLYPHS else "shape"}
        for i, name in enumerate(CLASSES)
    ]
    write_coco_split(root, split, rendered, categories, f"synthetic glyphs and shapes ({split})", params)


def render_image(
    rng: np.random.Generator, size: int, params: dict, frequencies: np.ndarray, counts: np.ndarray
) -> tuple[Image.Image, list]:
    """One image and its objects as (label, xyxy box around the visible pixels)."""
    canvas = background(rng, size)
    owner = np.full((size, size), -1, dtype=np.int32)  # which object each pixel shows
    drawn: list[tuple[int, int]] = []  # (label, full pixel count)
    target = int(rng.choice(len(counts), p=counts)) + 1
    low, high = math.log(params["min_object_size"]), math.log(params["max_object_size"])
    extents = np.sort(np.exp(rng.uniform(low, high, target)))[::-1]  # large first: small ones occlude less
    for extent in extents:
        for _ in range(6):  # placements tried for this size before it is given up
            label = int(rng.choice(len(CLASSES), p=frequencies))
            mask = object_mask(rng, CLASSES[label], float(extent), size)
            placed = None if mask is None else occlude(owner, drawn, mask, label, params["min_visible"])
            if placed is not None:
                owner = placed
                paint(rng, canvas, mask)
                break
    return finish_image(rng, canvas, owner, drawn)


def classification_crop(rng: np.random.Generator, size: int) -> tuple[np.ndarray, int]:
    """The pretraining task's example: one object of a uniformly drawn class (balanced, like
    ImageNet), its longer side 45–90 % of `size`, at a random place on this dataset's background
    with at most one clutter stroke (a detection image's 0–9 strokes span 320 px; over a crop they
    would cover the object); (uint8 [size, size, 3] pixels, label)."""
    label = int(rng.integers(len(CLASSES)))
    canvas = background(rng, size, max_strokes=1)
    mask = None
    while mask is None:
        mask = object_mask(rng, CLASSES[label], size * rng.uniform(0.45, 0.9), size)
    paint(rng, canvas, mask)
    canvas += rng.normal(0, rng.uniform(4, 14), canvas.shape)
    return np.clip(canvas, 0, 255).astype(np.uint8), label


def object_mask(rng: np.random.Generator, name: str, extent: float, size: int) -> np.ndarray | None:
    """Boolean [size, size] mask of one object whose longer side is about `extent` pixels, placed at
    random; None if it has too few pixels."""
    local = glyph_mask(rng, name, extent) if name in GLYPHS else shape_mask(rng, name, extent)
    height, width = local.shape
    if height >= size or width >= size or local.sum() < 12:
        return None
    top, left = int(rng.integers(0, size - height + 1)), int(rng.integers(0, size - width + 1))
    mask = np.zeros((size, size), dtype=bool)
    mask[top : top + height, left : left + width] = local
    return mask


@cache
def _font(pixels: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=pixels)


def glyph_mask(rng: np.random.Generator, glyph: str, extent: float) -> np.ndarray:
    """The glyph in Pillow's embedded font, stroked 0–2 px wider at random, stretched by up to
    ±25 % in aspect, turned by at most ±15°, cropped to its pixels, longer side ≈ `extent`."""
    pixels = max(8, int(round(extent * 1.4)))  # a glyph's ink is about 0.7 of the font size
    font = _font(pixels)
    stroke = int(rng.integers(0, 3)) if pixels > 24 else 0
    canvas = Image.new("L", (pixels * 2, pixels * 2))
    ImageDraw.Draw(canvas).text(
        (pixels, pixels), glyph, fill=255, font=font, anchor="mm", stroke_width=stroke, stroke_fill=255
    )
    aspect = math.exp(rng.uniform(-0.25, 0.25))
    canvas = canvas.resize((max(1, int(canvas.width * aspect)), canvas.height), Image.BILINEAR)
    canvas = canvas.rotate(math.degrees(rng.uniform(-SMALL_TURN, SMALL_TURN)), resample=Image.BILINEAR, expand=True)
    return _fit(np.asarray(canvas) > 127, extent)


def shape_mask(rng: np.random.Generator, shape: str, extent: float) -> np.ndarray:
    """The shape stretched by up to ±30 % in aspect (a bar is 3–5 times longer than wide), turned
    (freely, or by at most ±15°; the round shapes do not turn), cropped to its pixels, longer side
    ≈ `extent`."""
    aspect = rng.uniform(*ELONGATED[shape]) if shape in ELONGATED else math.exp(rng.uniform(-0.3, 0.3))
    stretch = math.sqrt(aspect)
    longer = max(stretch, 1 / stretch)
    half_w, half_h = extent / 2 * stretch / longer, extent / 2 / stretch / longer
    angle = rng.uniform(0, 2 * math.pi) if shape in TURNS_FREELY else rng.uniform(-SMALL_TURN, SMALL_TURN)
    side = int(math.ceil(math.sqrt(2) * extent)) + 4  # holds any turn of a polygon inside [−1, 1]²
    image = Image.new("L", (side, side))
    draw = ImageDraw.Draw(image)
    centre = side / 2
    box = [centre - half_w, centre - half_h, centre + half_w, centre + half_h]

    def place(points, scale=1.0):
        cos, sin = math.cos(angle), math.sin(angle)
        return [
            (
                centre + scale * (half_w * x * cos - half_h * y * sin),
                centre + scale * (half_w * x * sin + half_h * y * cos),
            )
            for x, y in points
        ]

    if shape in ("circle", "ring", "crescent"):
        draw.ellipse(box, fill=255)
        if shape == "ring":
            inner = rng.uniform(0.45, 0.7)
            draw.ellipse(
                [centre - half_w * inner, centre - half_h * inner, centre + half_w * inner, centre + half_h * inner],
                fill=0,
            )
        elif shape == "crescent":
            shift = half_w * rng.uniform(0.35, 0.55)
            draw.ellipse(
                [centre - half_w + shift, centre - half_h * 0.95, centre + half_w + shift, centre + half_h * 0.95],
                fill=0,
            )
    elif shape == "semicircle":
        draw.pieslice(box, 180, 360, fill=255)
    elif shape == "trefoil":  # three discs of half the radius around the centre
        for k in range(3):
            u = angle + 2 * math.pi * k / 3
            x, y = centre + half_w / 2 * math.cos(u), centre + half_h / 2 * math.sin(u)
            draw.ellipse([x - half_w / 2, y - half_h / 2, x + half_w / 2, y + half_h / 2], fill=255)
    else:
        outline = unit_outline(shape)
        draw.polygon(place(outline), fill=255)
        if shape.startswith("hollow_"):
            draw.polygon(place(outline, rng.uniform(0.5, 0.65)), fill=0)
    return _fit(np.asarray(image) > 127, extent)


def unit_outline(shape: str) -> list[tuple[float, float]]:
    """The polygon of a shape in [−1, 1]²."""
    base = shape.removeprefix("hollow_")
    polygons = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6, "heptagon": 7, "octagon": 8}
    stars = {"star4": 4, "star5": 5, "star6": 6, "star8": 8, "star": 5}
    if base in polygons:
        n = polygons[base]
        start = math.pi / 4 if n == 4 else -math.pi / 2
        return [(math.cos(start + 2 * math.pi * k / n), math.sin(start + 2 * math.pi * k / n)) for k in range(n)]
    if base in stars:
        n = stars[base]
        return [
            (
                (1.0 if k % 2 == 0 else 0.45) * math.cos(-math.pi / 2 + math.pi * k / n),
                (1.0 if k % 2 == 0 else 0.45) * math.sin(-math.pi / 2 + math.pi * k / n),
            )
            for k in range(2 * n)
        ]
    t = 0.33
    plus = [(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t), (-1, t), (-1, -t), (-t, -t)]
    outlines = {
        "plus": plus,
        "ellipse": [(math.cos(u), math.sin(u)) for u in np.linspace(0, 2 * math.pi, 48, endpoint=False)],
        "arrow": [(-1, -0.3), (0.2, -0.3), (0.2, -0.8), (1, 0), (0.2, 0.8), (0.2, 0.3), (-1, 0.3)],
        "house": [(-1, 1), (1, 1), (1, -0.2), (0, -1), (-1, -0.2)],
        "kite": [(0, -1), (0.6, -0.35), (0, 1), (-0.6, -0.35)],
        "bar": [(-1, -1), (1, -1), (1, 1), (-1, 1)],
        "trapezoid": [(-0.5, -1), (0.5, -1), (1, 1), (-1, 1)],
        "parallelogram": [(-0.4, -1), (1, -1), (0.4, 1), (-1, 1)],
        "hourglass": [(-1, -1), (1, -1), (0.15, 0), (1, 1), (-1, 1), (-0.15, 0)],
        "heart": [
            (
                16 * math.sin(u) ** 3 / 16,
                -(13 * math.cos(u) - 5 * math.cos(2 * u) - 2 * math.cos(3 * u) - math.cos(4 * u)) / 16,
            )
            for u in np.linspace(0, 2 * math.pi, 40)
        ],
    }
    return outlines[base]


def _fit(mask: np.ndarray, extent: float) -> np.ndarray:
    """`mask` cropped to its pixels and scaled so that its longer side is `extent` (nearest)."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return np.zeros((1, 1), dtype=bool)
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    scale = extent / max(crop.shape)
    height, width = max(1, int(round(crop.shape[0] * scale))), max(1, int(round(crop.shape[1] * scale)))
    resized = Image.fromarray(crop.astype(np.uint8) * 255).resize((width, height), Image.BILINEAR)
    return np.asarray(resized) > 127
