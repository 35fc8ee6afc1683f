"""GFL's general distribution box representation: the integral decoder, DFL against its formula in
float64, the head and model outputs, the criterion's DFL term and refusal, and the postprocessor."""

import math

import pytest
import torch

from detector.losses import DistributionFocalLoss, GIoULoss, QualityFocalLoss, RetinaNetCriterion, SmoothL1Loss
from detector.losses.iou import box_geometry
from detector.models import AnchorGenerator, RetinaNetHead
from detector.ops import BoxCoder, IoUMatcher
from detector.ops.distribution import boxes_to_distances, distances_to_boxes, integral
from detector.postprocess import RetinaNetPostProcessor

REG_MAX = 16


def two_hot_logits(distances, reg_max=REG_MAX):
    """Logits whose softmax puts (y_{i+1} − y) on bin y_i and (y − y_i) on bin y_{i+1}: its integral is y."""
    left = distances.floor()
    probs = torch.zeros(*distances.shape, reg_max + 1, dtype=torch.float64)
    probs.scatter_(-1, left.long().unsqueeze(-1), (left + 1 - distances).unsqueeze(-1))
    probs.scatter_add_(-1, (left.long() + 1).clamp(max=reg_max).unsqueeze(-1), (distances - left).unsqueeze(-1))
    return probs.clamp(min=1e-300).log()


def test_the_integral_decoder_round_trips_boxes_through_their_distances():
    g = torch.Generator().manual_seed(0)
    anchors = torch.tensor([[0.0, 0, 32, 32], [40, 8, 104, 72], [100, 100, 228, 228]], dtype=torch.float64)
    strides = torch.tensor([8.0, 16.0, 32.0], dtype=torch.float64)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    sides = torch.rand(3, 4, generator=g, dtype=torch.float64) * 12 * strides.unsqueeze(1)  # < 12 strides each
    boxes = torch.cat([centres - sides[:, :2], centres + sides[:, 2:]], dim=1)
    distances = boxes_to_distances(anchors, boxes, strides, REG_MAX)
    torch.testing.assert_close(distances, sides / strides.unsqueeze(1))
    torch.testing.assert_close(integral(two_hot_logits(distances)), distances, rtol=0, atol=1e-10)
    torch.testing.assert_close(distances_to_boxes(anchors, integral(two_hot_logits(distances)), strides), boxes)


def test_targets_are_clamped_to_two_bins():
    anchor = torch.tensor([[0.0, 0, 16, 16]])  # centre (8, 8)
    box = torch.tensor([[10.0, -400, 12, 9]])  # left side right of the centre, top side 51 strides away
    distances = boxes_to_distances(anchor, box, torch.tensor([8.0]), REG_MAX)
    torch.testing.assert_close(distances, torch.tensor([[0.0, REG_MAX - 0.01, 0.5, 0.125]]))
    uniform = torch.zeros(2, 4, REG_MAX + 1)
    torch.testing.assert_close(integral(uniform), torch.full((2, 4), REG_MAX / 2))


def dfl_reference(logits, targets):
    """−((y_{i+1} − y) log S_i + (y − y_i) log S_{i+1}), S the softmax, averaged over the 4 sides, summed over boxes."""
    total = 0.0
    for box_logits, box_targets in zip(logits.tolist(), targets.tolist()):
        for side, y in zip(box_logits, box_targets):
            top = max(side)
            log_sum = top + math.log(sum(math.exp(v - top) for v in side))
            i = math.floor(y)
            total += -((i + 1 - y) * (side[i] - log_sum) + (y - i) * (side[i + 1] - log_sum)) / 4
    return total


def dfl_inputs(boxes=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(boxes, 4, REG_MAX + 1, generator=g, dtype=torch.float64) * 3
    logits[0, 0] = torch.linspace(-50, 50, REG_MAX + 1, dtype=torch.float64)  # saturated
    targets = torch.rand(boxes, 4, generator=g, dtype=torch.float64) * (REG_MAX - 0.01)
    targets[0] = torch.tensor([0.0, 3.0, REG_MAX - 0.01, 15.5])  # the ends and an integer
    return logits, targets


def test_dfl_is_its_formula_in_float64():
    logits, targets = dfl_inputs()
    got = DistributionFocalLoss()(logits, targets, 3.0)
    torch.testing.assert_close(got, torch.tensor(dfl_reference(logits, targets) / 3.0, dtype=torch.float64))


def test_dfl_at_an_integer_target_is_the_cross_entropy_of_that_bin_and_least_on_the_two_hot_distribution():
    logits, _ = dfl_inputs(boxes=1, seed=1)
    integer = torch.full((1, 4), 7.0, dtype=torch.float64)
    ce = torch.nn.functional.cross_entropy(logits[0], torch.full((4,), 7), reduction="mean")
    torch.testing.assert_close(DistributionFocalLoss()(logits, integer, 1.0), ce)
    y = torch.tensor([[2.25, 0.5, 9.75, 14.0]], dtype=torch.float64)
    best = DistributionFocalLoss()(two_hot_logits(y), y, 1.0)
    for _ in range(5):
        assert best < DistributionFocalLoss()(two_hot_logits(y) + 0.1 * torch.randn_like(logits), y, 1.0)


def test_dfl_gradcheck():
    logits, targets = dfl_inputs(boxes=3, seed=2)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: DistributionFocalLoss()(x, targets, 2.0), (logits,))


def test_dfl_with_no_positives_is_zero_with_a_zero_gradient():
    logits = torch.zeros(0, 4, REG_MAX + 1, requires_grad=True)
    loss = DistributionFocalLoss()(logits, torch.zeros(0, 4), 1.0)
    loss.backward()
    assert loss.item() == 0.0 and logits.grad.shape == (0, 4, REG_MAX + 1)
    with pytest.raises(ValueError, match=r"\[P, 4, n \+ 1\] logits and \[P, 4\] targets"):
        DistributionFocalLoss()(torch.zeros(2, 4, 17), torch.zeros(2, 3), 1.0)


def test_the_head_predicts_a_distribution_per_side_and_refuses_a_bad_reg_max():
    head = RetinaNetHead(in_channels=16, num_anchors=9, num_classes=3, num_convs=1, channels=32, reg_max=REG_MAX)
    out = head([torch.randn(2, 16, 4, 4), torch.randn(2, 16, 2, 2)])
    assert set(out) == {"cls_logits", "box_distribution"}
    assert out["box_distribution"].shape == (2, (16 + 4) * 9, 4, REG_MAX + 1)
    assert head.box_distribution.out_channels == 9 * 4 * (REG_MAX + 1) and not hasattr(head, "box_deltas")
    with pytest.raises(ValueError, match="reg_max must be null"):
        RetinaNetHead(16, 9, 3, reg_max=0)


def test_the_model_gives_each_anchor_its_level_stride(compose_cfg):
    from hydra.utils import instantiate

    cfg = compose_cfg(["debug=smoke", "model.head.reg_max=8"])
    model = instantiate(cfg.model, num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 128, 128))
    per_level = out["num_anchors_per_level"]
    expected = torch.cat([torch.full((n,), float(s)) for n, s in zip(per_level, model.anchor_generator.strides)])
    assert torch.equal(out["anchor_strides"], expected) and out["box_distribution"].shape[-2:] == (4, 9)
    assert "box_deltas" not in out


ANCHORS = torch.tensor([[0, 0, 32, 32], [32, 0, 64, 32], [0, 32, 32, 64], [64, 64, 128, 128]], dtype=torch.float32)
STRIDES = torch.tensor([8.0, 8.0, 8.0, 16.0])


def distribution_outputs(distances):
    """Outputs of a GFL head whose four anchors predict `distances` [B, 4, 4] (in strides)."""
    return {
        "cls_logits": torch.full((distances.shape[0], 4, 2), -10.0),
        "box_distribution": two_hot_logits(distances.double()).float(),
        "anchors": ANCHORS,
        "anchor_strides": STRIDES,
        "num_anchors_per_level": [3, 1],
    }


def test_the_postprocessor_decodes_the_distribution_into_known_boxes():
    distances = torch.full((1, 4, 4), 2.0)
    distances[0, 3] = torch.tensor([1.0, 0.5, 2.0, 3.25])  # anchor 3: centre (96, 96), stride 16
    out = distribution_outputs(distances)
    out["cls_logits"][0, 3, 1] = 2.0
    out["cls_logits"][0, 0, 0] = 1.0  # anchor 0: centre (16, 16), 2 strides of 8 on each side
    detections = RetinaNetPostProcessor(BoxCoder())(out, [(200, 200)])[0]
    assert detections["labels"].tolist() == [1, 0]
    torch.testing.assert_close(detections["boxes"], torch.tensor([[80.0, 88, 128, 148], [0, 0, 32, 32]]))


def target(boxes, labels):
    return {"boxes": torch.tensor(boxes).reshape(-1, 4), "labels": torch.tensor(labels), "size": (128, 128)}


def test_the_criterion_adds_dfl_on_the_positives_and_gives_qfl_the_iou_of_the_integral_box():
    g = torch.Generator().manual_seed(3)
    out = distribution_outputs(torch.rand(1, 4, 4, generator=g) * 3 + 0.5)
    out["box_distribution"] = (
        out["box_distribution"] + torch.randn(1, 4, 4, REG_MAX + 1, generator=g)
    ).requires_grad_()
    truth = [[2.0, 2, 30, 33], [66, 60, 126, 130]]  # anchors 0 and 3
    criterion = RetinaNetCriterion(QualityFocalLoss(), GIoULoss(), IoUMatcher(), BoxCoder(), dfl_weight=0.25)
    losses = criterion(out, [target(truth, [0, 1])])
    rows = torch.tensor([0, 3])
    decoded = distances_to_boxes(ANCHORS[rows], integral(out["box_distribution"][0, rows].detach()), STRIDES[rows])
    side_targets = boxes_to_distances(ANCHORS[rows], torch.tensor(truth), STRIDES[rows], REG_MAX)
    dfl = dfl_reference(out["box_distribution"][0, rows].detach().double(), side_targets.double())
    torch.testing.assert_close(losses["loss_dfl"], torch.tensor(0.25 * dfl / 2.0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["loss_box"], GIoULoss()(decoded, torch.tensor(truth), 2.0), rtol=1e-5, atol=1e-6)
    quality = box_geometry(decoded, torch.tensor(truth)).iou
    cls_targets = torch.zeros(4, 2)
    cls_targets[0, 0], cls_targets[3, 1] = quality[0], quality[1]
    expected = QualityFocalLoss()(out["cls_logits"][0], cls_targets, 2.0)
    torch.testing.assert_close(losses["loss_cls"], expected, rtol=1e-5, atol=1e-6)
    (losses["loss_dfl"] + losses["loss_box"]).backward()
    assert (
        out["box_distribution"].grad[0, [1, 2]].abs().sum() == 0
        and out["box_distribution"].grad[0, rows].abs().sum() > 0
    )


def test_a_delta_loss_on_a_distribution_head_is_refused_with_the_fix():
    criterion = RetinaNetCriterion(QualityFocalLoss(), SmoothL1Loss(), IoUMatcher(), BoxCoder())
    with pytest.raises(ValueError, match=r"regresses box deltas.*box_loss=giou.*model.head.reg_max=null"):
        criterion(distribution_outputs(torch.ones(1, 4, 4)), [target([[2.0, 2, 30, 33]], [0])])


def test_a_delta_head_gives_no_dfl_term():
    generator = AnchorGenerator(sizes=[32], strides=[8], scales_per_octave=1, ratios=[1.0])
    anchors = generator([torch.zeros(1, 1, 4, 4)], (32, 32))
    out = {
        "cls_logits": torch.zeros(1, 16, 2),
        "box_deltas": torch.zeros(1, 16, 4),
        "anchors": anchors,
        "num_anchors_per_level": [16],
    }
    criterion = RetinaNetCriterion(QualityFocalLoss(), GIoULoss(), IoUMatcher(), BoxCoder())
    assert set(criterion(out, [target([[0.0, 0, 30, 30]], [1])])) == {"loss_cls", "loss_box", "num_pos", "num_neg"}


def test_the_decoder_stays_in_float32_under_autocast():
    """bf16 logits, as an autocast forward gives them, decode as in float32: in bf16 the integral's sum
    and anchors near 1,000 px would be off by pixels."""
    logits = torch.randn(5, 4, REG_MAX + 1, generator=torch.Generator().manual_seed(4)).bfloat16()
    anchors = ANCHORS[[0, 1, 2, 3, 3]] + torch.tensor([1000.0, 900.0, 1000.0, 900.0])
    strides = STRIDES[[0, 1, 2, 3, 3]] * 8
    expected = distances_to_boxes(anchors, integral(logits.float()), strides)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        boxes = distances_to_boxes(anchors, integral(logits), strides)
    assert boxes.dtype == torch.float32
    torch.testing.assert_close(boxes, expected, rtol=1e-6, atol=1e-4)
