import torch

from detector.data.coco import checked_coco
from detector.data.synthetic import prepare_synthetic_coco
from detector.engine.evaluator import CocoEvaluator


def ground_truth(cache_dir):
    splits = prepare_synthetic_coco(cache_dir, num_train=2, num_val=30, seed=11)
    return checked_coco(splits.val_ann, splits.val_dir)


def test_ground_truth_fed_back_scores_100_after_mapping_back_to_original_size(cache_dir):
    coco = ground_truth(cache_dir)
    category_ids = sorted(coco.getCatIds())
    evaluator = CocoEvaluator(coco, category_ids)
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


def test_wrong_labels_score_zero_and_no_detections_is_zero_not_a_crash(cache_dir):
    coco = ground_truth(cache_dir)
    evaluator = CocoEvaluator(coco, sorted(coco.getCatIds()))
    for image_id in coco.getImgIds():
        evaluator.update([{"image_id": image_id, "orig_size": (256, 256), "size": (256, 256)}],
                         [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}])
    stats, _ = evaluator.summarize()
    assert stats["AP"] == 0.0 and stats["AP50"] == 0.0 and stats["AR100"] == 0.0
