"""Reading an image file as 8-bit RGB, whatever its mode, depth or EXIF orientation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

EXIF_ORIENTATION = 0x0112


def read_rgb(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """(H × W × 3 uint8 array, what was changed on the way).

    Pixels are rotated as the EXIF orientation tag says (as detectron2 does: COCO-format boxes
    describe the image as displayed); grayscale, palette, RGBA and CMYK images are converted to
    RGB; 16- and 32-bit images are scaled to 8 bits by their full range. Raises OSError (also
    for truncated files) or ValueError when the file cannot be decoded.
    """
    changes = []
    with Image.open(path) as file:
        file.load()  # decode now: a truncated file raises here, not later
        orientation = file.getexif().get(EXIF_ORIENTATION, 1)
        if orientation != 1:
            changes.append(f"EXIF orientation {orientation} applied")
            file = ImageOps.exif_transpose(file)
        if file.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            changes.append(f"{file.mode} image scaled to 8 bits")
            values = np.asarray(file, dtype=np.float64)
            top = 65535.0 if file.mode.startswith("I;16") else max(float(values.max()), 1.0)
            gray = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
            return np.repeat(gray[..., None], 3, axis=2), changes
        if file.mode != "RGB":
            changes.append(f"{file.mode} image converted to RGB")
            file = file.convert("RGB")
        return np.asarray(file), changes
