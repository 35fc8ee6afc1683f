import pytest
import torch
from torchvision.ops import box_iou

from detector.ops import ATSSMatcher, blocks, matcher
from detector.ops.matcher import BACKGROUND, IGNORE, IoUMatcher, blockwise_box_iou

# Four 10×10 anchors side by side, and one far away.
ANCHORS = torch.tensor(
    [[0, 0, 10, 10], [10, 0, 20, 10], [20, 0, 30, 10], [30, 0, 40, 10], [100, 100, 110, 110]], dtype=torch.float32
)


def match(gt, matcher=None, crowd=None):
    gt = torch.tensor(gt, dtype=torch.float32).view(1, -1, 4)
    valid = torch.ones(gt.shape[:2], dtype=torch.bool)
    crowd = torch.tensor(crowd).view(1, -1) if crowd is not None else None
    return (matcher or IoUMatcher())(ANCHORS, gt, valid, crowd)[0].tolist()


def test_foreground_ignore_band_background():
    # gt [0,0,10,10]: IoU 1 with anchor 0 → fg; gt [12,0,22,10] vs anchor 1: 8/12 = 0.667 → fg (index 1)
    assert match([[0, 0, 10, 10], [12, 0, 22, 10]]) == [0, 1, BACKGROUND, BACKGROUND, BACKGROUND]
    # gt [24,0,34,10] vs anchor 2: 6/14 = 0.43 → ignore; vs anchor 3: 4/16 = 0.25 → background
    assert match([[24, 0, 34, 10]]) == [BACKGROUND, BACKGROUND, IGNORE, BACKGROUND, BACKGROUND]


def test_low_quality_matches_give_every_box_its_best_anchor():
    gt = [[25, 0, 35, 10]]  # IoU 1/3 with anchors 2 and 3 (a tie): below bg_iou
    assert match(gt) == [BACKGROUND] * 5
    assert match(gt, IoUMatcher(low_quality_matches="detectron2")) == [BACKGROUND, BACKGROUND, 0, 0, BACKGROUND]


def test_the_three_low_quality_modes_differ_where_the_references_do():
    """Box 0 has its best anchor in the ignore band (IoU 6/14 = 0.43 with anchor 2), box 1 below it
    (IoU 4/16 = 0.25 with anchor 0, whose other IoU is 0). none: ignored and background; Detectron
    (best anchors, then reset below 0.4): a positive and background; detectron2 and torchvision:
    two positives."""
    gt = [[24, 0, 34, 10], [-6, 0, 4, 10]]
    modes = {mode: match(gt, IoUMatcher(low_quality_matches=mode)) for mode in ("none", "detectron", "detectron2")}
    assert modes["none"] == [BACKGROUND, BACKGROUND, IGNORE, BACKGROUND, BACKGROUND]
    assert modes["detectron"] == [BACKGROUND, BACKGROUND, 0, BACKGROUND, BACKGROUND]
    assert modes["detectron2"] == [1, BACKGROUND, 0, BACKGROUND, BACKGROUND]
    with pytest.raises(
        ValueError, match=r"low_quality_matches must be one of \['none', 'detectron', 'detectron2'\], got True"
    ):
        IoUMatcher(low_quality_matches=True)


def test_no_boxes_means_all_background_and_padding_is_never_matched():
    gt = torch.zeros(2, 1, 4)
    gt[0, 0] = torch.tensor([0, 0, 10, 10])
    valid = torch.tensor([[True], [False]])  # image 1 has no boxes (a padded slot)
    matches = IoUMatcher()(ANCHORS, gt, valid)
    assert matches[0].tolist() == [0, BACKGROUND, BACKGROUND, BACKGROUND, BACKGROUND]
    assert matches[1].tolist() == [BACKGROUND] * 5
    empty = IoUMatcher()(ANCHORS, torch.zeros(3, 0, 4), torch.zeros(3, 0, dtype=torch.bool))
    assert empty.shape == (3, 5) and (empty == BACKGROUND).all()


def test_crowd_boxes_are_ignore_regions_not_positives():
    # a crowd region covering anchors 0–1 and half of anchor 2; a real box on anchor 3
    result = match([[0, 0, 25, 10], [30, 0, 40, 10]], crowd=[True, False])
    assert result == [IGNORE, IGNORE, IGNORE, 1, BACKGROUND]
    result = match([[0, 0, 24, 10], [30, 0, 40, 10]], crowd=[True, False])
    assert result[2] == BACKGROUND  # only 40 % of anchor 2 lies inside the crowd box


def test_crowd_background_is_the_references_dropped_crowd_box():
    """crowd="background": the anchors on a crowd box stay background, as if the annotation had been
    dropped (Detectron, detectron2, torchvision); the crowd box is still never matched."""
    crowd_as_background = IoUMatcher(crowd="background")
    result = match([[0, 0, 25, 10], [30, 0, 40, 10]], crowd_as_background, crowd=[True, False])
    assert result == [BACKGROUND, BACKGROUND, BACKGROUND, 1, BACKGROUND]
    assert match([[30, 0, 40, 10]]) == [BACKGROUND, BACKGROUND, BACKGROUND, 0, BACKGROUND]  # the box alone: the same
    assert match([[0, 0, 10, 10]], crowd_as_background, crowd=[True]) == [BACKGROUND] * 5  # IoU 1, yet not a positive
    with pytest.raises(ValueError, match=r"crowd must be one of \['ignore', 'background'\], got 'drop'"):
        IoUMatcher(crowd="drop")


def test_iou_in_blocks_of_anchors_equals_one_box_iou_call(monkeypatch):
    g = torch.Generator().manual_seed(1)
    corner = torch.rand(30, 2, generator=g) * 200
    boxes = torch.cat([corner, corner + torch.rand(30, 2, generator=g) * 60 + 1], 1)
    corner = torch.rand(1001, 2, generator=g) * 250
    anchors = torch.cat([corner, corner + torch.rand(1001, 2, generator=g) * 60 + 1], 1)
    in_blocks = blockwise_box_iou(boxes, anchors, block_elements=30 * 64)  # 16 blocks, the last one short
    assert torch.equal(in_blocks, box_iou(boxes, anchors))
    gt, valid = boxes.view(2, 15, 4), torch.ones(2, 15, dtype=torch.bool)
    whole = IoUMatcher(low_quality_matches="detectron2")(anchors, gt, valid)
    monkeypatch.setitem(blocks.BLOCK_ELEMENTS, "cpu", 3000)  # 100 anchors per call for 30 boxes
    calls = []
    monkeypatch.setattr(matcher, "box_iou", lambda *a: calls.append(1) or box_iou(*a))
    assert torch.equal(IoUMatcher(low_quality_matches="detectron2")(anchors, gt, valid), whole)
    assert len(calls) == 11


# ----------------------------------------------------------------------------- ATSS
# Level 0: four 10×10 anchors side by side (centres x = 5, 15, 25, 35); level 1: one 40×10 anchor (centre 20).
ATSS_ANCHORS = torch.tensor(
    [[0, 0, 10, 10], [10, 0, 20, 10], [20, 0, 30, 10], [30, 0, 40, 10], [0, 0, 40, 10]], dtype=torch.float32
)
ATSS_LEVELS = [4, 1]


def atss(gt, topk=2, crowd=None, matcher=None):
    gt = torch.tensor(gt, dtype=torch.float32).view(1, -1, 4)
    crowd = torch.tensor(crowd).view(1, -1) if crowd is not None else None
    return (matcher or ATSSMatcher(topk=topk))(
        ATSS_ANCHORS, gt, torch.ones(gt.shape[:2], dtype=torch.bool), crowd, num_anchors_per_level=ATSS_LEVELS
    )[0].tolist()


def test_atss_by_hand():
    """Box 0 [0, 0, 20, 10]: candidates anchors 0, 1 (level 0, distance 5) and 4 (level 1), IoUs
    .5, .5, .5: threshold .5 + 0; anchor 4's centre lies on its right edge, so positives 0 and 1.
    Box 1 [27, 2, 33, 8] is smaller than every anchor: candidates 2, 3 (IoU 18/118) and 4 (36/400);
    mean + std = 0.168 > 18/118, so it gets no positive. There is no ignore band."""
    assert atss([[0, 0, 20, 10]]) == [0, 0, BACKGROUND, BACKGROUND, BACKGROUND]
    ious = torch.tensor([18 / 118, 18 / 118, 36 / 400], dtype=torch.float64)
    assert ious.mean() + ious.std() > 18 / 118
    assert atss([[0, 0, 20, 10], [27, 2, 33, 8]]) == [0, 0, BACKGROUND, BACKGROUND, BACKGROUND]
    assert atss([[27, 2, 33, 8]], topk=1) == [BACKGROUND] * 5  # anchor 2 (IoU .15) and 4 (.09): threshold .18
    # two candidates can never pass: the larger lies |d|/2 above their mean, the threshold |d|/√2
    assert atss([[8, 0, 18, 10]], topk=1) == [BACKGROUND] * 5
    # both boxes claim anchor 1, [8, 0, 18, 10] with IoU 80/120 (threshold .632), [11, 0, 21, 10] with
    # 90/110 (threshold .771): the higher IoU takes it
    assert atss([[8, 0, 18, 10], [11, 0, 21, 10]]) == [BACKGROUND, 1, BACKGROUND, BACKGROUND, BACKGROUND]
    assert atss([[8, 0, 18, 10]]) == [BACKGROUND, 0, BACKGROUND, BACKGROUND, BACKGROUND]


def test_atss_image_without_boxes_and_crowd_regions():
    empty = ATSSMatcher()(
        ATSS_ANCHORS, torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.bool), num_anchors_per_level=ATSS_LEVELS
    )
    assert empty.shape == (2, 5) and (empty == BACKGROUND).all()
    assert atss([[0, 0, 25, 10]], crowd=[True]) == [IGNORE, IGNORE, IGNORE, BACKGROUND, IGNORE]
    assert atss([[0, 0, 25, 10]], crowd=[True], matcher=ATSSMatcher(2, crowd="background")) == [BACKGROUND] * 5
    with pytest.raises(ValueError, match="sums to 4, not to the 5 anchors"):
        ATSSMatcher()(ATSS_ANCHORS, torch.zeros(1, 1, 4), torch.ones(1, 1, dtype=torch.bool), num_anchors_per_level=[4])


def atss_per_image(anchors, boxes, levels, topk):
    """ATSS written out for one image, box by box and level by level."""
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    best = torch.full((len(anchors),), -1.0)
    matches = torch.full((len(anchors),), BACKGROUND)
    for g, box in enumerate(boxes):
        iou = box_iou(box[None], anchors)[0]
        distance = ((centres - (box[:2] + box[2:]) / 2) ** 2).sum(1).sqrt()
        chosen, start = [], 0
        for count in levels:
            order = sorted(range(start, start + count), key=lambda a: float(distance[a]))
            chosen += order[: min(topk, count)]
            start += count
        values = iou[chosen]
        threshold = values.mean() + values.std()
        for a in chosen:
            cx, cy = centres[a].tolist()
            inside = min(cx - box[0], cy - box[1], box[2] - cx, box[3] - cy) > 0.01
            if iou[a] >= threshold and inside and iou[a] > best[a]:
                best[a], matches[a] = iou[a], g
    return matches


def test_batched_atss_equals_a_per_image_loop():
    from detector.models import AnchorGenerator

    generator = AnchorGenerator()
    anchors = generator([torch.zeros(1, 1, 128 // s, 128 // s) for s in generator.strides])
    levels = [(128 // s) ** 2 * 9 for s in generator.strides]
    g = torch.Generator().manual_seed(3)
    corner = torch.rand(3, 6, 2, generator=g) * 90
    boxes = torch.cat([corner, corner + 8 + torch.rand(3, 6, 2, generator=g) * 60], -1)
    valid = torch.tensor([[True] * 6, [True] * 3 + [False] * 3, [False] * 6])  # the last image has no box
    batched = ATSSMatcher()(anchors, boxes, valid, num_anchors_per_level=levels)
    for image in range(3):
        expected = atss_per_image(anchors, boxes[image][valid[image]], levels, 9)
        assert torch.equal(batched[image], expected)
    assert (batched[:2] >= 0).sum() > 20 and (batched[2] == BACKGROUND).all()
