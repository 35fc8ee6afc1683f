import torch
import torch.nn.functional as F

from detector.losses import FocalLoss, RetinaNetCriterion, SmoothL1Loss
from detector.ops import BoxCoder, IoUMatcher

ANCHORS = torch.tensor([[0, 0, 10, 10], [10, 0, 20, 10], [20, 0, 30, 10], [30, 0, 40, 10], [100, 100, 110, 110]],
                       dtype=torch.float32)
K = 3


def outputs(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"cls_logits": torch.randn(batch, 5, K, generator=g), "box_deltas": torch.randn(batch, 5, 4, generator=g) * 0.1,
            "anchors": ANCHORS, "num_anchors_per_level": [5]}


def target(boxes, labels, crowd=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    crowd = torch.zeros(len(boxes), dtype=torch.bool) if crowd is None else torch.tensor(crowd)
    return {"boxes": boxes, "labels": torch.tensor(labels, dtype=torch.long), "iscrowd": crowd}


def criterion(**kwargs):
    return RetinaNetCriterion(FocalLoss(), SmoothL1Loss(beta=0.11), IoUMatcher(), BoxCoder(), **kwargs)


def focal_sum(logits, targets):
    return FocalLoss()(logits, targets, 1.0)


def test_image_without_boxes_all_negative_and_box_loss_exactly_zero():
    out = outputs(1)
    losses = criterion()(out, [target([], [])])
    assert losses["loss_box"].item() == 0.0
    assert losses["num_pos"].item() == 0
    expected = focal_sum(out["cls_logits"][0], torch.zeros(5, K))  # normalizer clamps to 1
    torch.testing.assert_close(losses["loss_cls"], expected)


def test_losses_by_hand_with_a_positive_an_ignored_anchor_and_an_empty_image():
    out = outputs(2)
    out["cls_logits"][0, 2] = 50.0  # anchor 2 is in the ignore band: this would dominate if it counted
    # image 0: box on anchor 0 (label 2) and a box with IoU 0.43 to anchor 2; image 1: no boxes
    targets = [target([[0, 0, 10, 10], [24, 0, 34, 10]], [2, 1]), target([], [])]
    losses = criterion(cls_weight=1.0, box_weight=2.0)(out, targets)
    assert losses["num_pos"].item() == 1
    kept = torch.ones(2, 5, dtype=torch.bool)
    kept[0, 2] = False
    cls_targets = torch.zeros(2, 5, K)
    cls_targets[0, 0, 2] = 1.0
    torch.testing.assert_close(losses["loss_cls"], focal_sum(out["cls_logits"][kept], cls_targets[kept]))
    # the matched box equals anchor 0, so its encoded target is 0 and the loss is SL1(pred − 0)
    expected_box = F.smooth_l1_loss(out["box_deltas"][0, 0], torch.zeros(4), beta=0.11, reduction="sum")
    torch.testing.assert_close(losses["loss_box"], 2.0 * expected_box)


def test_crowd_box_gives_no_positive():
    losses = criterion()(outputs(1), [target([[0, 0, 10, 10]], [0], crowd=[True])])
    assert losses["num_pos"].item() == 0 and losses["loss_box"].item() == 0.0


def test_normalizer_ema_is_a_saved_buffer():
    crit = criterion(normalizer_momentum=0.9, normalizer_init=100.0)
    out = outputs(1)
    targets = [target([[0, 0, 10, 10]], [2])]
    first = crit(out, targets)
    torch.testing.assert_close(crit.normalizer_ema, torch.tensor(0.9 * 100 + 0.1 * 1))
    unnormalized = criterion()(out, targets)  # normalizer 1
    torch.testing.assert_close(first["loss_cls"], unnormalized["loss_cls"] / 90.1)
    crit(out, targets)
    torch.testing.assert_close(crit.state_dict()["normalizer_ema"], torch.tensor(0.9 * 90.1 + 0.1))
    crit.eval()
    crit(out, targets)  # evaluation does not move the EMA
    torch.testing.assert_close(crit.normalizer_ema, torch.tensor(0.9 * 90.1 + 0.1))


class RecordingBoxLoss(torch.nn.Module):
    input_space = "xyxy"

    def forward(self, pred, target, normalizer):
        self.seen = (pred.detach(), target.detach())
        return (pred - target).abs().sum() / normalizer


def test_box_losses_on_boxes_receive_decoded_boxes():
    box_loss = RecordingBoxLoss()
    crit = RetinaNetCriterion(FocalLoss(), box_loss, IoUMatcher(), BoxCoder())
    out = outputs(1)
    out["box_deltas"].zero_()
    crit(out, [target([[1, 0, 11, 10]], [0])])  # IoU 9/11 with anchor 0
    pred, gt = box_loss.seen
    torch.testing.assert_close(pred, ANCHORS[:1])  # zero deltas decode to the anchor itself
    torch.testing.assert_close(gt, torch.tensor([[1.0, 0.0, 11.0, 10.0]]))
