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
        det = {"boxes": xyxy * torch.tensor([0.5, 0.75, 0.5, 0.75]), "scores": torch.ones(len(anns)),
               "labels": torch.tensor([category_ids.index(a["category_id"]) for a in anns])}
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
        evaluator.update([{"image_id": image_id, "orig_size": (256, 256), "size": (256, 256)}],
                         [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}])
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
