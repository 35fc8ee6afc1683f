from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from detector.losses import FocalLoss, RetinaNetCriterion, SmoothL1Loss
from detector.losses import criterion as criterion_module
from detector.losses.criterion import pad_targets
from detector.losses.criterion import row_counts as real_row_counts
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


CONFIGS = Path(__file__).parents[1] / "configs"
SYNC_FREE = [(group, path.stem) for group in ("loss", "box_loss") for path in sorted((CONFIGS / group).glob("*.yaml"))
             if path.stem != "ohem"]  # OHEM waits by design: per-image NMS and top-k


def criterion_with(group: str, name: str) -> RetinaNetCriterion:
    loss = instantiate(OmegaConf.load(CONFIGS / group / f"{name}.yaml"))
    cls_loss, box_loss = (loss, SmoothL1Loss(beta=0.11)) if group == "loss" else (FocalLoss(), loss)
    return RetinaNetCriterion(cls_loss, box_loss, IoUMatcher(), BoxCoder())


def on_meta(crit: RetinaNetCriterion, monkeypatch) -> dict:
    """The criterion's forward and backward with the model outputs on the meta device (shapes, no
    data), the targets on the host as the loader gives them. Meta tensors refuse every operation
    whose result depends on their values on the host (item, bool, nonzero, boolean masks,
    bincount): on CUDA each of those waits for the GPU. The row counts, the one deliberate wait,
    are taken from the same call on the CPU."""
    out = outputs(2)
    targets = [target([[0, 0, 10, 10], [20, 0, 30, 10], [100, 100, 110, 110]], [2, 1, 0], crowd=[False, False, True]),
               target([[10, 0, 20, 10]], [1])]
    counts = []
    monkeypatch.setattr(criterion_module, "row_counts", lambda c: counts.append(real_row_counts(c)) or counts[-1])
    crit(out, targets)
    monkeypatch.setattr(criterion_module, "row_counts", lambda c: counts[0])
    meta = {key: value.to("meta") if torch.is_tensor(value) else value for key, value in out.items()}
    meta["cls_logits"].requires_grad_(True)
    meta["box_deltas"].requires_grad_(True)
    losses = crit.to("meta")(meta, targets)
    (losses["loss_cls"] + losses["loss_box"]).backward()
    return {"losses": losses, "cls_grad": meta["cls_logits"].grad, "box_grad": meta["box_deltas"].grad}


@pytest.mark.parametrize("group,name", SYNC_FREE)
def test_criterion_waits_for_the_device_only_for_the_row_counts(group, name, monkeypatch):
    result = on_meta(criterion_with(group, name), monkeypatch)
    assert result["losses"]["loss_cls"].device.type == "meta" and result["losses"]["loss_cls"].shape == ()
    assert result["cls_grad"].shape == (2, 5, K) and result["box_grad"].shape == (2, 5, 4)


def test_the_meta_check_catches_a_host_synchronisation(monkeypatch):
    """OHEM selects per image with NMS and top-k over data-dependent counts: it must wait for the device."""
    with pytest.raises((RuntimeError, NotImplementedError), match="meta|Meta"):
        on_meta(criterion_with("loss", "ohem"), monkeypatch)
    with pytest.raises(NotImplementedError, match="nonzero"):  # the boolean mask the criterion used to index with
        torch.zeros(3, device="meta")[torch.ones(3, dtype=torch.bool, device="meta")]


def test_row_counts_and_pad_targets():
    kept = torch.tensor([[True, False, True], [True, True, False]])
    positive = torch.tensor([[False, False, True], [True, False, False]])
    assert real_row_counts(torch.stack([kept.sum(), positive.sum()])) == (4, 2)
    boxes, labels, valid, crowd = pad_targets([target([[0, 0, 1, 1], [1, 1, 2, 2]], [3, 4]), target([], [])], "cpu")
    assert boxes.shape == (2, 2, 4) and labels.tolist() == [[3, 4], [0, 0]]
    assert valid.tolist() == [[True, True], [False, False]] and crowd is None  # no crowd box: no crowd pass
    _, _, _, crowd = pad_targets([target([[0, 0, 1, 1]], [3], crowd=[True]), target([], [])], "cpu")
    assert crowd.tolist() == [[True], [False]]


class RecordingOHEM(torch.nn.Module):
    needs_anchors = True

    def forward(self, logits, targets, normalizer, *, image_index, anchors):
        self.seen = (logits.detach(), targets, image_index, anchors)
        return logits.sum() * 0


def test_a_loss_that_needs_anchors_gets_each_rows_image_and_anchor():
    out = outputs(3)
    out["cls_logits"][:, :, 0] = torch.arange(15.0).view(3, 5)  # row b·5 + a carries its own index
    loss = RecordingOHEM()
    crit = RetinaNetCriterion(loss, SmoothL1Loss(beta=0.11), IoUMatcher(), BoxCoder())
    crit(out, [target([[0, 0, 10, 10]], [1]), target([[24, 0, 34, 10]], [0]), target([], [])])  # image 1: anchor 2 ignored
    logits, targets, image_index, anchors = loss.seen
    rows = [b * 5 + a for b in range(3) for a in range(5) if (b, a) != (1, 2)]
    assert logits[:, 0].tolist() == rows
    assert image_index.tolist() == [row // 5 for row in rows]
    assert torch.equal(anchors, ANCHORS[[row % 5 for row in rows]])
    assert targets[0].tolist() == [0.0, 1.0, 0.0] and targets.sum() == 1  # image 0, anchor 0: label 1
