import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detector.data.coco import CocoDetection, check_split, coco_splits
from detector.data.loader import PadCollate
from detector.data.synthetic import CLASSES, prepare_synthetic_coco
from detector.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transforms, train_transforms


def digest(folder: Path) -> str:
    h = hashlib.sha1()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def test_synthetic_is_deterministic_and_a_real_detection_problem(tmp_path):
    a = prepare_synthetic_coco(str(tmp_path / "a"), num_train=120, num_val=4, seed=3)
    b = prepare_synthetic_coco(str(tmp_path / "b"), num_train=120, num_val=4, seed=3)
    assert digest(Path(a.train_dir).parent) == digest(Path(b.train_dir).parent)
    assert prepare_synthetic_coco(str(tmp_path / "a"), num_train=120, num_val=4, seed=3) == a  # cached
    other = prepare_synthetic_coco(str(tmp_path / "a"), num_train=120, num_val=4, seed=4)
    assert other.train_ann != a.train_ann

    coco = json.loads(Path(a.train_ann).read_text())
    assert [c["name"] for c in coco["categories"]] == list(CLASSES) and len(CLASSES) >= 6
    per_image = np.bincount([ann["image_id"] for ann in coco["annotations"]], minlength=121)[1:]
    assert per_image.min() >= 1 and per_image.max() <= 15 and per_image.mean() > 4
    areas = np.array([ann["area"] for ann in coco["annotations"]])
    assert (areas < 32**2).mean() > 0.2 and ((areas >= 32**2) & (areas < 96**2)).mean() > 0.2
    assert (areas >= 96**2).sum() >= 10  # COCO's small, medium and large all occur
    sides = np.array([ann["bbox"][2:] for ann in coco["annotations"]])
    assert sides.min() >= 3 and sides.max() >= 120
    labels = np.array([ann["category_id"] for ann in coco["annotations"]])
    assert np.bincount(labels)[1:].min() > 0.1 * len(labels)  # every class well represented
    first = np.asarray(Image.open(Path(a.train_dir) / coco["images"][0]["file_name"]))
    assert first.shape == (256, 256, 3) and first.std() > 20  # textured, not a flat background


def test_default_config_has_at_least_200_validation_images(compose_cfg):
    assert compose_cfg().data.num_val >= 200


def write_coco(tmp_path, annotations, categories=((3, "cat"), (7, "dog"), (11, "eel")), size=(60, 80)):
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    Image.fromarray(np.full((size[0], size[1], 3), 128, np.uint8)).save(image_dir / "a.jpg")
    data = {
        "images": [{"id": 5, "file_name": "a.jpg", "height": size[0], "width": size[1]}],
        "annotations": [
            {"id": i + 1, "image_id": 5, "area": 1.0, "iscrowd": 0, **a} for i, a in enumerate(annotations)
        ],
        "categories": [{"id": i, "name": n} for i, n in categories],
    }
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    return str(ann), str(image_dir)


def test_coco_dataset_contiguous_labels_clipping_crowd_and_degenerate_boxes(tmp_path):
    ann, image_dir = write_coco(
        tmp_path,
        [
            {"bbox": [10, 5, 20, 10], "category_id": 11},
            {"bbox": [70, 50, 30, 30], "category_id": 3},  # clipped to the 80×60 image
            {"bbox": [0, 0, 80, 60], "category_id": 7, "iscrowd": 1},
            {"bbox": [5, 5, 0, 10], "category_id": 3},  # zero width: dropped by the checks before training
            {"bbox": [90, 70, 10, 10], "category_id": 3},  # entirely outside: dropped by the checks too
        ],
    )
    dataset = CocoDetection(ann, image_dir, eval_transforms(60, 1000))
    assert dataset.num_classes == 3 and dataset.category_ids == [3, 7, 11]
    assert dataset.class_names == ["cat", "dog", "eel"]
    image, target = dataset[0]
    assert image.shape == (3, 60, 80) and target["image_id"] == 5
    assert target["orig_size"] == (60, 80) and target["size"] == (60, 80)
    torch.testing.assert_close(target["boxes"], torch.tensor([[10.0, 5, 30, 15], [70, 50, 80, 60], [0, 0, 80, 60]]))
    assert target["labels"].tolist() == [2, 0, 1]
    assert target["iscrowd"].tolist() == [False, False, True]
    expected_pixel = (128 / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    torch.testing.assert_close(image[:, 30, 40], torch.tensor(expected_pixel, dtype=torch.float32), atol=0.03, rtol=0)


def test_resize_rule_and_flip_keep_boxes_consistent(tmp_path):
    ann, image_dir = write_coco(tmp_path, [{"bbox": [10, 5, 20, 10], "category_id": 3}], size=(100, 300))
    # short side 200 would make the long side 600 > 450, so the long side wins: scale 1.5
    resized = CocoDetection(ann, image_dir, eval_transforms(200, 450))
    image, target = resized[0]
    assert image.shape == (3, 150, 450) and target["size"] == (150, 450)
    torch.testing.assert_close(target["boxes"], torch.tensor([[15.0, 7.5, 45.0, 22.5]]), atol=1e-3, rtol=0)
    flipped = CocoDetection(ann, image_dir, train_transforms([100], 1000, flip_prob=1.0))
    image, target = flipped[0]
    torch.testing.assert_close(target["boxes"], torch.tensor([[300 - 30.0, 5.0, 300 - 10.0, 15.0]]), atol=1e-3, rtol=0)


def test_pad_collate_to_multiples_of_the_stride():
    a, b = torch.ones(3, 100, 130), torch.full((3, 60, 300), 2.0)
    images, targets = PadCollate(128)([(a, {"i": 0}), (b, {"i": 1})])
    assert images.shape == (2, 3, 128, 384) and [t["i"] for t in targets] == [0, 1]
    assert images[0, :, :100, :130].eq(1).all() and images[0, :, 100:].eq(0).all() and images[0, :, :, 130:].eq(0).all()
    assert images[1, :, :60, :300].eq(2).all()


def test_missing_coco_paths_name_the_path_and_the_layout(tmp_path):
    splits = coco_splits(
        str(tmp_path / "annotations/instances_train2017.json"),
        str(tmp_path / "train2017"),
        str(tmp_path / "annotations/instances_val2017.json"),
        str(tmp_path / "val2017"),
    )
    with pytest.raises(FileNotFoundError) as error:
        check_split(splits, "train")
    message = str(error.value)
    assert "data.train_ann" in message and "instances_train2017.json" in message and "ROOT/annotations" in message
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations/instances_val2017.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="data.val_dir: image folder not found"):
        check_split(splits, "val")
    (tmp_path / "val2017").mkdir()
    assert check_split(splits, "val") == (splits.val_ann, splits.val_dir)  # no training images needed


def test_filter_empty_leaves_out_images_without_a_non_crowd_box(tmp_path, caplog):
    """Detectron, detectron2 and torchvision train only on images with a box that is not crowd."""
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(np.full((60, 80, 3), 128, np.uint8)).save(image_dir / f"{name}.jpg")
    box = {"bbox": [10, 5, 20, 10], "category_id": 3, "area": 200.0}
    data = {
        "images": [
            {"id": i, "file_name": f"{n}.jpg", "height": 60, "width": 80} for i, n in ((1, "a"), (2, "b"), (3, "c"))
        ],
        "annotations": [{"id": 1, "image_id": 1, "iscrowd": 0, **box}, {"id": 2, "image_id": 2, "iscrowd": 1, **box}],
        "categories": [{"id": 3, "name": "cat"}],
    }
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    assert CocoDetection(str(ann), str(image_dir), eval_transforms(60, 1000)).image_ids == [1, 2, 3]
    with caplog.at_level("INFO"):
        assert CocoDetection(str(ann), str(image_dir), eval_transforms(60, 1000), filter_empty=True).image_ids == [1]
    assert "2 of 3 images have no non-crowd box" in caplog.text
    data["annotations"] = data["annotations"][1:]
    ann.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="no image has a non-crowd box, so data.filter_empty=true leaves nothing"):
        CocoDetection(str(ann), str(image_dir), eval_transforms(60, 1000), filter_empty=True)


def test_the_coco_recipes_filter_empty_images_and_the_synthetic_data_keeps_all(compose_cfg):
    assert compose_cfg(["experiment=coco_r50_1x"]).data.filter_empty
    assert compose_cfg(["data=coco_custom"]).data.filter_empty
    assert not compose_cfg().data.filter_empty
