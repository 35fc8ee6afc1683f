import torch
from torchvision.ops import box_iou

from detector.ops import BoxCoder
from detector.postprocess import RetinaNetPostProcessor

# level 0: three anchors, two overlapping heavily; level 1: one big anchor
ANCHORS = torch.tensor(
    [[10, 10, 50, 50], [12, 12, 52, 52], [100, 100, 140, 140], [0, 0, 200, 100]], dtype=torch.float32
)
K = 4


def predictions(batch=1):
    return {
        "cls_logits": torch.full((batch, 4, K), -10.0),
        "box_deltas": torch.zeros(batch, 4, 4),
        "anchors": ANCHORS,
        "num_anchors_per_level": [3, 1],
    }


def test_known_boxes_scores_labels_and_nms():
    pred = predictions()
    pred["cls_logits"][0, 0, 2] = 3.0  # best
    pred["cls_logits"][0, 1, 2] = 2.0  # same class, IoU 0.82 with anchor 0 → suppressed
    pred["cls_logits"][0, 1, 1] = 1.0  # other class on the same anchor → kept
    pred["cls_logits"][0, 3, 0] = 0.0  # score 0.5, box clipped to the image
    pred["box_deltas"][0, 2] = torch.tensor([0.5, 0.0, 0.0, 0.0])  # below threshold anyway
    det = RetinaNetPostProcessor(BoxCoder())(pred, [(90, 180)])[0]
    assert det["labels"].tolist() == [2, 1, 0]
    torch.testing.assert_close(det["scores"], torch.sigmoid(torch.tensor([3.0, 1.0, 0.0])))
    torch.testing.assert_close(det["boxes"], torch.tensor([[10.0, 10, 50, 50], [12, 12, 52, 52], [0, 0, 180, 90]]))


def test_deltas_are_decoded():
    pred = predictions()
    pred["cls_logits"][0, 2, 3] = 4.0
    pred["box_deltas"][0, 2] = torch.tensor([0.25, -0.5, 0.0, 0.6931472])  # shift by (10, −20), double height
    det = RetinaNetPostProcessor(BoxCoder())(pred, [(300, 300)])[0]
    torch.testing.assert_close(det["boxes"], torch.tensor([[110.0, 60.0, 150.0, 140.0]]))


def test_threshold_cap_and_images_are_independent():
    pred = predictions(batch=2)
    pred["cls_logits"][:, 0, :] = torch.tensor([2.0, 1.0, -2.0, -2.9])  # −2.9 → 0.052 kept, −3.0 would not be
    pred["cls_logits"][1, 0, 0] = -3.0  # score 0.047 < 0.05
    post = RetinaNetPostProcessor(BoxCoder(), max_detections=3)
    first, second = post(pred, [(200, 200), (200, 200)])
    assert first["labels"].tolist() == [0, 1, 2]  # 4 candidates above threshold, capped at 3, by score
    assert second["labels"].tolist() == [1, 2, 3]  # its label 0 is below threshold; NMS never crosses images


def test_top_k_per_level():
    pred = predictions()
    pred["cls_logits"][0, :3, 0] = torch.tensor([5.0, 4.0, 3.0])
    det = RetinaNetPostProcessor(BoxCoder(), topk_candidates=1, nms_thresh=1.0)(pred, [(300, 300)])[0]
    assert det["scores"].tolist() == [torch.sigmoid(torch.tensor(5.0)).item()]


def test_no_detections_gives_empty_tensors():
    det = RetinaNetPostProcessor(BoxCoder())(predictions(), [(100, 100)])[0]
    assert det["boxes"].shape == (0, 4) and len(det["scores"]) == 0 and len(det["labels"]) == 0


def test_many_overlapping_candidates_cut_to_max_detections():
    g = torch.Generator().manual_seed(0)
    anchors = torch.rand(500, 2, generator=g) * 400
    anchors = torch.cat([anchors, anchors + 30], dim=1)
    pred = {
        "cls_logits": torch.randn(1, 500, 2, generator=g) + 1,
        "box_deltas": torch.zeros(1, 500, 4),
        "anchors": anchors,
        "num_anchors_per_level": [500],
    }
    det = RetinaNetPostProcessor(BoxCoder(), max_detections=100)(pred, [(500, 500)])[0]
    assert len(det["boxes"]) == 100
    assert (det["scores"][:-1] >= det["scores"][1:]).all()
    for label in (0, 1):
        same = det["boxes"][det["labels"] == label]
        iou = box_iou(same, same) - torch.eye(len(same))
        assert iou.max() <= 0.5
