import contextlib
import io

import pytest
import torch

from detector.data.coco import checked_coco
from detector.data.synthetic import prepare_synthetic_coco
from detector.engine.evaluator import CocoEvaluator


def ground_truth(cache_dir):
    splits = prepare_synthetic_coco(cache_dir, num_train=2, num_val=30, seed=11)
    return checked_coco(splits.val_ann, splits.val_dir)


BACKENDS = ["pycocotools", "faster_coco_eval"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_ground_truth_fed_back_scores_100_after_mapping_back_to_original_size(cache_dir, backend):
    coco = ground_truth(cache_dir)
    category_ids = sorted(coco.getCatIds())
    evaluator = CocoEvaluator(coco, category_ids, backend)
    for image_id in coco.getImgIds():
        anns = coco.imgToAnns[image_id]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32)
        xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        # as if the network saw the image at half its width and 3/4 of its height
        target = {"image_id": image_id, "orig_size": (256, 256), "size": (192, 128)}
        det = {
            "boxes": xyxy * torch.tensor([0.5, 0.75, 0.5, 0.75]),
            "scores": torch.ones(len(anns)),
            "labels": torch.tensor([category_ids.index(a["category_id"]) for a in anns]),
        }
        evaluator.update([target], [det])
    stats, table = evaluator.summarize()
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert stats[name] == 100.0, (name, stats)
    assert "Average Precision" in table


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_labels_score_zero_and_no_detections_is_zero_not_a_crash(cache_dir, backend):
    coco = ground_truth(cache_dir)
    evaluator = CocoEvaluator(coco, sorted(coco.getCatIds()), backend)
    for image_id in coco.getImgIds():
        evaluator.update(
            [{"image_id": image_id, "orig_size": (256, 256), "size": (256, 256)}],
            [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}],
        )
    stats, _ = evaluator.summarize()
    assert stats["AP"] == 0.0 and stats["AP50"] == 0.0 and stats["AR100"] == 0.0


def test_faster_coco_eval_gives_pycocotools_12_stats_on_the_same_detections(cache_dir):
    coco = ground_truth(cache_dir)
    category_ids = sorted(coco.getCatIds())
    generator = torch.Generator().manual_seed(0)
    evaluators = [CocoEvaluator(coco, category_ids, backend) for backend in BACKENDS]
    for image_id in coco.getImgIds():
        anns = coco.imgToAnns[image_id]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        noisy = xyxy + torch.randn(xyxy.shape, generator=generator) * xywh[:, 2:].repeat(1, 2) * 0.15
        false = torch.rand(5, 2, generator=generator) * 200
        boxes = torch.cat([noisy, torch.cat([false, false + 40], dim=1)])  # hits of every quality and misses
        labels = torch.tensor([category_ids.index(a["category_id"]) for a in anns] + [0, 1, 2, 3, 4])
        labels[torch.rand(len(labels), generator=generator) < 0.1] = 5  # some wrong classes
        det = {"boxes": boxes, "scores": torch.rand(len(boxes), generator=generator), "labels": labels}
        for evaluator in evaluators:
            evaluator.update([{"image_id": image_id, "orig_size": (256, 256), "size": (256, 256)}], [det])
    reference, faster = (evaluator.summarize()[0] for evaluator in evaluators)
    assert 5.0 < reference["AP"] < 95.0 and 0.0 < reference["APs"]  # a non-trivial score
    assert faster == pytest.approx(reference, abs=1e-6) and len(reference) == 12


def test_detections_of_an_image_outside_the_ground_truth_are_refused(cache_dir):
    coco = ground_truth(cache_dir)
    evaluator = CocoEvaluator(coco, sorted(coco.getCatIds()), "faster_coco_eval")
    det = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}
    evaluator.update([{"image_id": max(coco.getImgIds()) + 1, "orig_size": (256, 256), "size": (256, 256)}], [det])
    with pytest.raises(ValueError, match="1 image ids of the detections are not in the ground truth"):
        evaluator.summarize()


def tiny_ground_truth():
    """Two 100×100 images; class a: one box in each, class b: one box in image 2, class c: none."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = {
        "images": [{"id": i, "width": 100, "height": 100, "file_name": f"{i}.jpg"} for i in (1, 2)],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40]},
            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [10, 10, 40, 40]},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [60, 60, 30, 30]},
        ],
    }
    for ann in coco.dataset["annotations"]:
        ann.update(area=ann["bbox"][2] * ann["bbox"][3], iscrowd=0)
    coco.createIndex()
    return coco


def xyxy(*boxes):
    return torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes], dtype=torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_class_ap_of_constructed_detections(backend):
    """Class a: scores .9 (hit), .8 (a false positive), .3 (hit): precision 1 up to recall .5, then
    2/3, so AP = (51 + 50·2/3)/101 at every IoU. Class b: IoU 1280/1920 = .667 passes 4 of the 10
    thresholds: AP 40, AP50 100, AP75 0. Class c has no ground truth: −1. The values are those of
    COCOeval's precision array sliced by hand."""
    from pycocotools.cocoeval import COCOeval

    coco = tiny_ground_truth()
    evaluator = CocoEvaluator(coco, [1, 2, 3], backend)
    size = {"orig_size": (100, 100), "size": (100, 100)}
    evaluator.update(
        [{"image_id": 1, **size}],
        [
            {
                "boxes": xyxy([10, 10, 40, 40], [70, 0, 20, 20]),
                "scores": torch.tensor([0.9, 0.8]),
                "labels": torch.tensor([0, 0]),
            }
        ],
    )
    evaluator.update(
        [{"image_id": 2, **size}],
        [
            {
                "boxes": xyxy([60, 60, 30, 30], [18, 10, 40, 40]),
                "scores": torch.tensor([0.3, 0.7]),
                "labels": torch.tensor([0, 1]),
            }
        ],
    )
    stats, _ = evaluator.summarize()
    rows = {row["class"]: row for row in evaluator.per_class}
    a = round((51 + 50 * 2 / 3) / 101 * 100, 3)
    # PR curves, the mean over a and b (c has no ground truth): at IoU .5 a is 1 then 2/3 past recall .5,
    # b is 1; at IoU .75 b is 0. Each curve's mean is the summary's AP50 / AP75.
    curves = evaluator.pr_curves
    assert curves["recall"] == [round(r / 100, 4) for r in range(101)]
    assert curves["AP50"] == [100.0] * 51 + [round((2 / 3 + 1) / 2 * 100, 3)] * 50
    assert curves["AP75"] == [50.0] * 51 + [round(2 / 3 / 2 * 100, 3)] * 50
    assert sum(curves["AP50"]) / 101 == pytest.approx(stats["AP50"], abs=1e-3)
    assert sum(curves["AP75"]) / 101 == pytest.approx(stats["AP75"], abs=1e-3)
    assert (rows["a"]["AP"], rows["a"]["AP50"], rows["a"]["AP75"], rows["a"]["gt_boxes"]) == (a, a, a, 2)
    assert (rows["b"]["AP"], rows["b"]["AP50"], rows["b"]["AP75"], rows["b"]["gt_boxes"]) == (40.0, 100.0, 0.0, 1)
    assert (rows["c"]["AP"], rows["c"]["gt_boxes"]) == (-1.0, 0)
    with contextlib.redirect_stdout(io.StringIO()):
        reference = COCOeval(
            coco,
            coco.loadRes([{k: r[k] for k in ("image_id", "category_id", "bbox", "score")} for r in evaluator.results]),
            "bbox",
        )
        reference.evaluate()
        reference.accumulate()
    precision = reference.eval["precision"]
    for k, name in enumerate("ab"):
        curve = precision[:, :, k, 0, 2]
        assert rows[name]["AP"] == pytest.approx(curve.mean() * 100, abs=1e-3)
        assert rows[name]["AP75"] == pytest.approx(curve[5].mean() * 100, abs=1e-3)
