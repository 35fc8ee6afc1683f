import math

import torch

from detector.ops.box_coder import BoxCoder


def random_boxes(n, generator):
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 500
    wh = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 200 + 16  # size ratios inside the clamp
    return torch.cat([xy, xy + wh], dim=1)


def test_encode_by_hand():
    coder = BoxCoder()
    anchor = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    box = torch.tensor([[5.0, 5.0, 15.0, 25.0]])
    # centres (5, 5) → (10, 15); sizes (10, 10) → (10, 20)
    torch.testing.assert_close(coder.encode(anchor, box), torch.tensor([[0.5, 1.0, 0.0, math.log(2.0)]]))
    weighted = BoxCoder(weights=(10, 10, 5, 5)).encode(anchor, box)
    torch.testing.assert_close(weighted, torch.tensor([[5.0, 10.0, 0.0, 5 * math.log(2.0)]]))


def test_round_trip_with_weights():
    g = torch.Generator().manual_seed(0)
    anchors, boxes = random_boxes(1000, g), random_boxes(1000, g)
    for weights in [(1, 1, 1, 1), (10, 10, 5, 5)]:
        coder = BoxCoder(weights)
        torch.testing.assert_close(coder.decode(anchors, coder.encode(anchors, boxes)), boxes)


def test_decode_clamps_exp_and_broadcasts():
    coder = BoxCoder()
    anchors = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    deltas = torch.tensor([[[0.0, 0.0, 100.0, 100.0]], [[0.0, 0.0, 0.0, 0.0]]])  # (B=2, A=1, 4)
    boxes = coder.decode(anchors, deltas)
    assert boxes.shape == (2, 1, 4)
    assert torch.isfinite(boxes).all()
    torch.testing.assert_close(boxes[0, 0, 2] - boxes[0, 0, 0], torch.tensor(1000.0))  # 16·exp(log(1000/16))
    torch.testing.assert_close(boxes[1, 0], anchors[0])
