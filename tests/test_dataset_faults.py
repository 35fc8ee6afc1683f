"""A COCO-format dataset with every kind of defect: validate_dataset.py names each one, and
training runs to the end on it with every skip counted and every good image used."""

import json

import numpy as np
import pytest
from PIL import Image

from detector.data.coco import CocoDetection, checked_coco
from detector.data.images import read_rgb
from detector.data.transforms import eval_transforms
from detector.data.validation import DatasetError
from detector.tools import validate_dataset
from tests.conftest import run_script, run_tool

GOOD = [1, 2, 3, 4]


def picture(width=96, height=64, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((height, width, 3)) * 255).astype(np.uint8)


def build_defective(root):
    """Images 1–4 good; 5–9 fixable files; 10 truncated; 11 missing; 12 wrong size in the JSON;
    13 no annotations; annotations with every box defect."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    for i in GOOD:
        Image.fromarray(picture(seed=i)).save(images_dir / f"{i}.jpg")
    Image.fromarray(picture(seed=5)).convert("L").save(images_dir / "5.png")  # grayscale
    Image.fromarray(picture(seed=6)).convert("RGBA").save(images_dir / "6.png")  # RGBA
    Image.fromarray(picture(seed=7)).convert("CMYK").save(images_dir / "7.jpg")  # CMYK
    Image.fromarray((np.random.default_rng(8).random((64, 96)) * 65535).astype(np.uint16)).save(images_dir / "8.png")
    rotated = Image.fromarray(picture(width=64, height=96, seed=9))  # stored 64×96, displayed 96×64
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    rotated.save(images_dir / "9.jpg", exif=exif)
    Image.fromarray(picture(seed=10)).save(images_dir / "10.jpg")
    (images_dir / "10.jpg").write_bytes((images_dir / "10.jpg").read_bytes()[:300])  # truncated
    Image.fromarray(picture(seed=12)).save(images_dir / "12.jpg")
    (images_dir / "13.jpg").write_bytes((images_dir / "1.jpg").read_bytes())

    images = [
        {"id": i, "file_name": f"{i}.{'png' if i in (5, 6, 8) else 'jpg'}", "width": 96, "height": 64}
        for i in range(1, 14)
    ]
    images[11]["width"] = 120  # image 12: the JSON does not match the file
    box = [10.0, 8.0, 30.0, 20.0]
    annotations = [
        {"id": 100 + i, "image_id": i, "category_id": 1 + i % 2, "bbox": box, "area": 600.0, "iscrowd": 0}
        for i in range(1, 13)
    ]
    annotations += [
        {"id": 201, "image_id": 1, "category_id": 1, "bbox": [5.0, 5.0, 0.0, 10.0], "area": 0, "iscrowd": 0},
        {"id": 202, "image_id": 2, "category_id": 1, "bbox": [5.0, 5.0, 10.0, -3.0], "area": 0, "iscrowd": 0},
        {"id": 203, "image_id": 3, "category_id": 2, "bbox": [80.0, 50.0, 40.0, 30.0], "area": 1200, "iscrowd": 0},
        {"id": 204, "image_id": 4, "category_id": 1, "bbox": [float("nan"), 5.0, 10.0, 10.0], "area": 0, "iscrowd": 0},
        {"id": 205, "image_id": 4, "category_id": 99, "bbox": box, "area": 600.0, "iscrowd": 0},
        {"id": 206, "image_id": 77, "category_id": 1, "bbox": box, "area": 600.0, "iscrowd": 0},
        {"id": 207, "image_id": 2, "category_id": 2, "bbox": [40.0, 30.0, 40.0, 30.0], "area": 1200, "iscrowd": 1},
        {"id": 208, "image_id": 3, "category_id": 1, "bbox": [1.0, 2.0, 3.0], "area": 0, "iscrowd": 0},
    ]
    data = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "disc"}],
    }
    ann_file = root / "annotations.json"
    ann_file.write_text(json.dumps(data))  # NaN is written as the NaN literal, which json also reads
    return ann_file, images_dir


EXPECTED = {  # kind: the image or annotation id named with it
    "converted_image": ["image 5", "image 6", "image 7", "image 8"],
    "exif_orientation": ["image 9"],
    "unreadable_image": ["image 10"],
    "missing_file": ["image 11"],
    "size_mismatch": ["image 12"],
    "no_annotations": ["image 13"],
    "empty_box": ["annotation 201", "annotation 202"],
    "box_outside_image": ["annotation 203"],
    "invalid_box": ["annotation 204", "annotation 208"],
    "unknown_category": ["annotation 205"],
    "orphan_annotation": ["annotation 206"],
    "crowd": ["annotation 207"],
}


def validate_script(*args):
    return run_tool(validate_dataset.main, *args)  # detector validate-data ARGS


@pytest.fixture(scope="module")
def defective(tmp_path_factory):
    return build_defective(tmp_path_factory.mktemp("defective"))


def test_validate_dataset_names_every_defect_with_its_id(defective):
    result = validate_script(*defective)
    assert result.returncode == 0, result.stdout + result.stderr  # trainable: nothing blocking
    lines = result.stdout.splitlines()
    for kind, ids in EXPECTED.items():
        named = [line for line in lines if f"] {kind}:" in line]
        assert len(named) == len(ids), (kind, named)
        for id_text, line in zip(ids, named):
            assert f" {id_text} " in line, line
    assert "| missing_file | skip | 1 | image left out |" in result.stdout
    # 13 images less the missing, truncated and mis-sized ones; 20 annotations less 6 bad ones and 3 on left-out images
    assert "10 images and 11 annotations usable" in result.stdout


def test_a_blocking_problem_does_not_hide_the_others(defective, tmp_path):
    """A duplicate image id blocks training; the same pass still names every file problem
    (missing, truncated, wrongly sized, converted) and every annotation problem."""
    ann_file, images_dir = defective
    data = json.loads(ann_file.read_text())
    data["images"].append({**data["images"][0], "file_name": "1.jpg"})  # image id 1 twice
    duplicated = tmp_path / "duplicated.json"
    duplicated.write_text(json.dumps(data))
    result = validate_script(duplicated, images_dir)
    assert result.returncode == 1 and "training cannot proceed" in result.stdout
    assert "] duplicate_image_id: image 1 " in result.stdout
    for kind, ids in EXPECTED.items():
        assert len([line for line in result.stdout.splitlines() if f"] {kind}:" in line]) == len(ids), kind


def test_the_fixes_are_real(defective):
    _, images_dir = defective
    gray, changes = read_rgb(images_dir / "5.png")
    assert gray.shape == (64, 96, 3) and (gray[..., 0] == gray[..., 2]).all() and "converted to RGB" in changes[0]
    deep, changes = read_rgb(images_dir / "8.png")
    expected = (np.asarray(Image.open(images_dir / "8.png"), dtype=np.float64) / 65535 * 255 + 0.5).astype(np.uint8)
    assert (deep[..., 1] == np.clip(expected, 0, 255)).all() and "scaled to 8 bits" in changes[0]
    upright, changes = read_rgb(images_dir / "9.jpg")
    assert upright.shape == (64, 96, 3) and changes == ["EXIF orientation 6 applied"]


@pytest.mark.parametrize(
    "text,message",
    [
        ('{"images": [], "annotations": [', "invalid JSON at line 1, column 32"),
        (
            '{"images": [{"id": 1, "file_name": "1.jpg", "width": 9, "height": 9}, '
            '{"id": 1, "file_name": "2.jpg", "width": 9, "height": 9}], "annotations": [], "categories": [{"id": 1}]}',
            "duplicate_image_id: image 1",
        ),
        ('{"images": [], "annotations": [], "categories": []}', "no_categories"),
        ('{"images": {}, "annotations": [], "categories": []}', "'images' must be a list"),
    ],
)
def test_blocking_problems_stop_before_training(tmp_path, text, message):
    ann_file = tmp_path / "bad.json"
    ann_file.write_text(text)
    result = validate_script(ann_file, tmp_path)
    assert result.returncode == 1 and message in result.stdout and "training cannot proceed" in result.stdout
    with pytest.raises(DatasetError, match="cannot be used for training"):
        checked_coco(str(ann_file), str(tmp_path))


def test_training_uses_every_good_image_and_counts_every_skip(defective, tmp_path):
    ann_file, images_dir = defective
    dataset = CocoDetection(str(ann_file), str(images_dir), eval_transforms(64, 96))
    assert dataset.image_ids == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13]  # only the missing file is known at start
    served, replaced = set(), set()
    for index in range(len(dataset)):
        _, target = dataset[index]
        served.add(target["image_id"])
        replaced.update(target.get("replaces", []))
    assert served == {1, 2, 3, 4, 5, 6, 7, 8, 9, 13}  # every good and every fixable image
    assert replaced == {10, 12}  # the truncated file and the one whose size is not the JSON's

    run = tmp_path / "run"
    paths = [
        f"data.train_ann={ann_file}",
        f"data.train_dir={images_dir}",
        f"data.val_ann={ann_file}",
        f"data.val_dir={images_dir}",
    ]
    result = run_script(
        "train.py",
        "data=coco_custom",
        *paths,
        "data.train_min_sizes=[64]",
        "data.test_min_size=64",
        "data.max_size=96",
        "data.batch_size=2",
        "data.eval_batch_size=2",
        "data.num_workers=0",
        "model.backbone.depth=18",
        "model.fpn.out_channels=32",
        "model.head.num_convs=1",
        "model.head.channels=32",
        "trainer.max_iters=12",
        "trainer.eval_period=0",
        "trainer.amp=off",
        "trainer.device=cpu",
        f"hydra.run.dir={run}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["iteration"] == 12 and metrics["replaced_images"] == [10, 12]
    log = (run / "train.log").read_text()
    assert "1 image(s) left out, 6 annotation(s) dropped" in log
    assert "image 10" in log and "cannot be decoded" in log and "is 96×64 but" in log
