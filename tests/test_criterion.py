from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from detector.engine.diagnostics import loss_inputs
from detector.losses import FocalLoss, GHMCLoss, GHMRLoss, QualityFocalLoss, RetinaNetCriterion, SmoothL1Loss
from detector.losses import criterion as criterion_module
from detector.losses.criterion import pad_targets
from detector.losses.criterion import row_counts as real_row_counts
from detector.models import AnchorGenerator
from detector.ops import ATSSMatcher, BoxCoder, IoUMatcher
from detector.ops.matcher import IGNORE

ANCHORS = torch.tensor(
    [[0, 0, 10, 10], [10, 0, 20, 10], [20, 0, 30, 10], [30, 0, 40, 10], [100, 100, 110, 110]], dtype=torch.float32
)
K = 3


def outputs(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "cls_logits": torch.randn(batch, 5, K, generator=g),
        "box_deltas": torch.randn(batch, 5, 4, generator=g) * 0.1,
        "anchors": ANCHORS,
        "num_anchors_per_level": [3, 2],
    }


def target(boxes, labels, crowd=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    crowd = torch.zeros(len(boxes), dtype=torch.bool) if crowd is None else torch.tensor(crowd)
    return {"boxes": boxes, "labels": torch.tensor(labels, dtype=torch.long), "iscrowd": crowd, "size": (120, 160)}


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
SYNC_FREE = [
    (group, path.stem)
    for group in ("loss", "box_loss")
    for path in sorted((CONFIGS / group).glob("*.yaml"))
    if path.stem != "ohem"
]  # OHEM waits by design: per-image NMS and top-k


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
    targets = [
        target([[0, 0, 10, 10], [20, 0, 30, 10], [100, 100, 110, 110]], [2, 1, 0], crowd=[False, False, True]),
        target([[10, 0, 20, 10]], [1]),
    ]
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
    assert real_row_counts(torch.stack([kept.sum(), positive.sum()])) == [4, 2]
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
    crit(
        out, [target([[0, 0, 10, 10]], [1]), target([[24, 0, 34, 10]], [0]), target([], [])]
    )  # image 1: anchor 2 ignored
    logits, targets, image_index, anchors = loss.seen
    rows = [b * 5 + a for b in range(3) for a in range(5) if (b, a) != (1, 2)]
    assert logits[:, 0].tolist() == rows
    assert image_index.tolist() == [row // 5 for row in rows]
    assert torch.equal(anchors, ANCHORS[[row % 5 for row in rows]])
    assert targets[0].tolist() == [0.0, 1.0, 0.0] and targets.sum() == 1  # image 0, anchor 0: label 1


def official_ghm_level(values, g, valid, bins, momentum, acc, last_edge):
    """One level of the official GHM code (GHM_Detection / mmdetection GHMC and GHMR forward): the
    loop over bins on this level's valid elements, tot = their number, the shared EMA `acc`
    advanced in place; float64."""
    edges = [i / bins for i in range(bins + 1)]
    edges[-1] = last_edge
    tot = max(float(valid.sum()), 1.0)
    weights = torch.zeros_like(values)
    n = 0
    for i in range(bins):
        inds = (g >= edges[i]) & (g < edges[i + 1]) & valid
        num = int(inds.sum())
        if num > 0:
            n += 1
            acc[i] = momentum * acc[i] + (1 - momentum) * num if momentum > 0 else num
            weights[inds] = tot / acc[i]
    if n > 0:
        weights = weights / n
    return (values * weights).sum() / tot


def five_level_batch(seed):
    """Outputs for a 256-px batch of 2 on P3–P7 (12,276 anchors, levels of 9,216 … 9 rows) and targets
    with 1–6 boxes an image, K = 3."""
    g = torch.Generator().manual_seed(seed)
    generator = AnchorGenerator()
    features = [torch.zeros(1, 1, 256 // s, 256 // s) for s in generator.strides]
    anchors = generator(features)
    per_level = [f.shape[-1] ** 2 * generator.num_anchors_per_location for f in features]
    out = {
        "cls_logits": torch.randn(2, len(anchors), K, generator=g) * 2 - 2,
        "box_deltas": torch.randn(2, len(anchors), 4, generator=g) * 0.3,
        "anchors": anchors,
        "num_anchors_per_level": per_level,
    }
    targets = []
    for n in (1 + seed % 3, 6):
        xy = torch.rand(n, 2, generator=g) * 180
        wh = 16 + torch.rand(n, 2, generator=g) * 140
        targets.append(
            target(
                torch.cat([xy, (xy + wh).clamp(max=256)], 1).tolist(), torch.randint(0, K, (n,), generator=g).tolist()
            )
        )
    return out, targets


def official_ghm_per_level(out, targets, acc_c, acc_r, box_coder):
    """Σ over levels of the official GHM-C (30 bins, momentum .75) and GHM-R (μ .02, 10 bins, momentum
    .7) on the criterion's matches, on leaves whose gradients the test compares."""
    matcher = IoUMatcher(low_quality_matches="detectron2")
    gt_boxes, gt_labels, gt_valid, _ = pad_targets(targets, "cpu")
    matches = matcher(out["anchors"], gt_boxes, gt_valid)
    logits = out["cls_logits"].double().requires_grad_(True)
    deltas = out["box_deltas"].double().requires_grad_(True)
    loss_cls = loss_box = 0.0
    start = 0
    for count in out["num_anchors_per_level"]:
        level = slice(start, start + count)
        start += count
        m = matches[:, level]
        x = logits[:, level]
        y = torch.zeros_like(x, dtype=torch.float64)
        pos = m >= 0
        labels = gt_labels.gather(1, m.clamp(min=0))
        y[pos] = F.one_hot(labels[pos], K).double()
        valid = (m != IGNORE).unsqueeze(-1).expand_as(x)
        gc = (torch.sigmoid(x.detach().float()) - y.float()).abs().double()
        bce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
        loss_cls = loss_cls + official_ghm_level(bce, gc, valid, 30, 0.75, acc_c, 1 + 1e-6)
        boxes = gt_boxes.gather(1, m.clamp(min=0).unsqueeze(-1).expand(-1, -1, 4)).double()
        encoded = box_coder.encode(
            out["anchors"][level].double().expand(2, -1, -1).reshape(-1, 4), boxes.reshape(-1, 4)
        ).view(2, -1, 4)
        diff = deltas[:, level] - encoded
        root = torch.sqrt(diff * diff + 0.02**2)
        gr = (diff.detach().float() / root.detach().float()).abs().double()
        loss_box = loss_box + official_ghm_level(
            root - 0.02, gr, pos.unsqueeze(-1).expand_as(diff), 10, 0.7, acc_r, 1e3
        )
    (loss_cls + loss_box).backward()
    return loss_cls, loss_box, logits.grad, deltas.grad


def test_ghm_runs_per_level_as_the_official_code_over_iterations():
    """GHM-C and GHM-R, called per FPN level by the criterion, against the official per-level loop
    over 4 iterations on 5 levels: values, the shared EMAs, and the gradients."""
    box_coder = BoxCoder()
    crit = RetinaNetCriterion(GHMCLoss(), GHMRLoss(), IoUMatcher(low_quality_matches="detectron2"), box_coder)
    acc_c, acc_r = [0.0] * 30, [0.0] * 10
    for seed in range(4):
        out, targets = five_level_batch(seed)
        expected_cls, expected_box, cls_grad, box_grad = official_ghm_per_level(out, targets, acc_c, acc_r, box_coder)
        out["cls_logits"].requires_grad_(True)
        out["box_deltas"].requires_grad_(True)
        losses = crit(out, targets)
        (losses["loss_cls"] + losses["loss_box"]).backward()
        torch.testing.assert_close(losses["loss_cls"].double(), expected_cls, rtol=2e-6, atol=0)
        torch.testing.assert_close(losses["loss_box"].double(), expected_box, rtol=2e-6, atol=0)
        torch.testing.assert_close(out["cls_logits"].grad.double(), cls_grad, rtol=1e-4, atol=1e-9)
        # float32 targets: near d = 0 the ASL1 gradient d/√(d² + μ²) moves by 1/μ = 50 times their rounding
        torch.testing.assert_close(out["box_deltas"].grad.double(), box_grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        crit.cls_loss.acc_sum.double(), torch.tensor(acc_c, dtype=torch.float64), rtol=1e-6, atol=0
    )
    torch.testing.assert_close(
        crit.box_loss.acc_sum.double(), torch.tensor(acc_r, dtype=torch.float64), rtol=1e-6, atol=0
    )


def test_per_level_ghm_differs_from_one_call_over_all_levels():
    """The split matters: on the same batch, one call over all 12,276 anchors' elements gives a
    classification loss several times smaller (so the test above can fail)."""
    out, targets = five_level_batch(0)
    per_level, whole = (
        RetinaNetCriterion(
            GHMCLoss(momentum=0.0, per_level=flag),
            GHMRLoss(momentum=0.0, per_level=flag),
            IoUMatcher(low_quality_matches="detectron2"),
            BoxCoder(),
        )(out, targets)
        for flag in (True, False)
    )
    assert per_level["loss_cls"] > 2 * whole["loss_cls"]
    assert not torch.isclose(per_level["loss_box"], whole["loss_box"], rtol=1e-3)


def test_negative_elements_are_kept_anchors_times_classes_minus_positives():
    """Image 0: 5 anchors, one ignored, one positive → 4·3 − 1 = 11 negative elements; image 1 (no
    boxes): 15. The trainer logs their ratio to the positives (neg/pos)."""
    out = outputs(2)
    losses = criterion()(out, [target([[0, 0, 10, 10], [24, 0, 34, 10]], [2, 1]), target([], [])])
    assert losses["num_pos"].item() == 1 and losses["num_neg"].item() == 11 + 15


class RecordingImageSize(torch.nn.Module):
    input_space = "xyxy"
    needs_image_size = True

    def forward(self, pred, target, normalizer, *, image_size):
        self.seen = image_size
        return pred.sum() * 0


def test_a_box_loss_that_needs_the_image_size_gets_each_positives():
    loss = RecordingImageSize()
    crit = RetinaNetCriterion(FocalLoss(), loss, IoUMatcher(), BoxCoder())
    first, second = target([[0, 0, 10, 10]], [1]), target([[10, 0, 20, 10], [30, 0, 40, 10]], [0, 2])
    second["size"] = (100, 90)
    crit(outputs(2), [first, second])
    assert loss.seen.tolist() == [[120.0, 160.0], [100.0, 90.0], [100.0, 90.0]]
    del first["size"]
    with pytest.raises(KeyError, match="needs each target's 'size'"):
        crit(outputs(2), [first, second])


def test_iou_targets_give_each_positive_the_iou_of_its_predicted_box():
    """Zero deltas decode to the anchor: anchor 0 [0, 0, 10, 10] against its box [1, 0, 11, 10] has
    IoU 90/110, the target of its class; every other element stays 0. "auto" takes IoU targets for a
    loss that accepts them (QFL) and one-hot targets for the others."""
    out = outputs(1)
    out["box_deltas"] = torch.zeros_like(out["box_deltas"])
    targets = [target([[1, 0, 11, 10]], [2])]
    soft = RetinaNetCriterion(QualityFocalLoss(), SmoothL1Loss(beta=0.11), IoUMatcher(), BoxCoder())
    assert soft.cls_target == "iou"
    with loss_inputs(soft.cls_loss) as seen:  # what the loss was given
        soft(out, targets)
    expected = torch.zeros(5, K)
    expected[0, 2] = 90 / 110
    torch.testing.assert_close(seen[0][1], expected)
    onehot = criterion()
    with loss_inputs(onehot.cls_loss) as seen:
        onehot(out, targets)
    hard = seen[0][1]
    assert onehot.cls_target == "onehot" and hard[0, 2] == 1.0 and hard.sum() == 1.0
    with pytest.raises(
        ValueError, match=r"FocalLoss's formula assumes targets in \{0, 1\}; use a loss that takes soft"
    ):
        criterion(cls_target="iou")


def test_atss_matching_gets_the_levels_and_waits_for_the_device_only_for_the_row_counts(monkeypatch):
    crit = RetinaNetCriterion(FocalLoss(), SmoothL1Loss(beta=0.11), ATSSMatcher(topk=2), BoxCoder())
    result = on_meta(crit, monkeypatch)
    assert result["losses"]["loss_cls"].device.type == "meta" and result["cls_grad"].shape == (2, 5, K)
    crit = RetinaNetCriterion(FocalLoss(), SmoothL1Loss(beta=0.11), ATSSMatcher(topk=2), BoxCoder())
    losses = crit(outputs(1), [target([[0, 0, 10, 10]], [1])])
    assert losses["num_pos"].item() >= 1 and torch.isfinite(losses["loss_box"])
