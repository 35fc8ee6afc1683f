"""Detect objects in image files with a checkpoint; write annotated pictures and COCO results.

    detector predict CHECKPOINT IMAGE_OR_FOLDER [...] [--out predictions] [--score 0.3] [--amp auto]

Each image is read as RGB (EXIF orientation applied), resized and normalised as in the
checkpoint's evaluation, padded, and run on the CPU through the model (under `--amp`, resolved like
`trainer.amp`: auto is bf16 only where it is fast) and its postprocessing. Boxes are
mapped back to the file's pixels. Writes OUT/<name>.png with the boxes, class names and scores
drawn on it, and OUT/detections.json in the COCO results format (image_id is the position in the
list of images, "file_name" names the file, category_id is the model's label 0…K−1 and "category"
its name), every detection above the model's own threshold.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torchvision.io import write_png

from detector.data.coco import coco_results
from detector.data.images import read_rgb
from detector.data.loader import PadCollate
from detector.data.transforms import eval_transforms
from detector.engine.evaluator import RESULT_KEYS
from detector.engine.inference import load_for_inference
from detector.engine.pictures import draw_detections
from detector.engine.precision import resolve_precision

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def image_files(paths: list[Path]) -> list[Path]:
    files = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise SystemExit(f"{path}: no such file or folder")
    if not files:
        raise SystemExit(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {', '.join(map(str, paths))}")
    return files


@torch.no_grad()
def predict(checkpoint: Path, files: list[Path], out: Path, score: float, amp: str = "auto") -> list[dict]:
    device = torch.device("cpu")
    precision = resolve_precision(amp, device)
    loaded = load_for_inference(checkpoint)
    model, postprocess, config, classes = loaded.model, loaded.postprocessor, loaded.config, loaded.classes
    transform = eval_transforms(config.data.test_min_size, config.data.max_size)
    collate = PadCollate(int(config.data.get("size_divisibility", 128)))
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for image_id, path in enumerate(files):
        pixels, _ = read_rgb(path)
        tensor = transform(image=pixels, bboxes=[], labels=[], iscrowd=[])["image"]
        images, _ = collate([(tensor, {})])
        with precision.autocast(device):
            predictions = model(images)
        detections = postprocess(predictions, [tuple(tensor.shape[-2:])])[0]
        scale = (pixels.shape[1] / tensor.shape[2], pixels.shape[0] / tensor.shape[1])
        for record in coco_results(detections, image_id, scale, range(len(classes))):
            kept = {key: record[key] for key in RESULT_KEYS}
            results.append({**kept, "file_name": str(path), "category": classes[record["category_id"]]})
        boxes = detections["boxes"] * torch.tensor(scale).repeat(2)
        shown = detections["scores"] >= score
        picture = draw_detections(
            pixels, boxes[shown], detections["labels"][shown], detections["scores"][shown], classes
        )
        write_png(picture, str(out / f"{path.stem}.png"))
    (out / "detections.json").write_text(json.dumps(results))
    return results


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("images", type=Path, nargs="+", help="image files or folders")
    parser.add_argument("--out", type=Path, default=Path("predictions"))
    parser.add_argument("--score", type=float, default=0.3, help="draw detections at least this confident")
    parser.add_argument("--amp", default="auto", choices=["auto", "off", "bf16"], help="autocast precision")
    args = parser.parse_args(argv)
    files = image_files(args.images)
    results = predict(args.checkpoint, files, args.out, args.score, args.amp)
    print(f"{len(results)} detections in {len(files)} images; pictures and detections.json in {args.out}")


if __name__ == "__main__":
    main()
