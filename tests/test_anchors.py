import math

import pytest
import torch

from detector.models.anchors import AnchorGenerator


def test_cell_anchors_by_hand_order_and_shift():
    gen = AnchorGenerator(sizes=(32,), scales_per_octave=1, ratios=(0.5, 1.0, 2.0), strides=(8,))
    anchors = gen.grid_anchors([(2, 2)], torch.device("cpu"))
    assert anchors.shape == (2 * 2 * 3, 4)
    r = math.sqrt(2.0)
    # ratio h/w = 0.5: w = 32·√2, h = 32/√2; centred at (0, 0)
    expected_cell = torch.tensor(
        [[-16 * r, -16 / r, 16 * r, 16 / r], [-16.0, -16.0, 16.0, 16.0], [-16 / r, -16 * r, 16 / r, 16 * r]]
    )
    torch.testing.assert_close(anchors[:3], expected_cell)
    # locations are row-major (y, x): the second location is x = 8, y = 0
    torch.testing.assert_close(anchors[3:6], expected_cell + torch.tensor([8.0, 0.0, 8.0, 0.0]))
    torch.testing.assert_close(anchors[6:9], expected_cell + torch.tensor([0.0, 8.0, 0.0, 8.0]))
    torch.testing.assert_close(anchors[9:12], expected_cell + 8.0)


def test_octave_scales_and_sizes_per_level():
    gen = AnchorGenerator(sizes=(32, 64), scales_per_octave=3, ratios=(1.0,), strides=(8, 16), offset=0.5)
    anchors = gen.grid_anchors([(1, 1), (1, 1)], torch.device("cpu"))
    widths = (anchors[:, 2] - anchors[:, 0]).tolist()
    expected = [32, 32 * 2 ** (1 / 3), 32 * 2 ** (2 / 3), 64, 64 * 2 ** (1 / 3), 64 * 2 ** (2 / 3)]
    assert widths == pytest.approx(expected, rel=1e-6)
    centers = ((anchors[:, 0] + anchors[:, 2]) / 2).tolist()
    assert centers == pytest.approx([4, 4, 4, 8, 8, 8])  # offset 0.5 → (x + 0.5)·stride


def test_default_count_and_cache():
    gen = AnchorGenerator()
    grids = [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    first = gen.grid_anchors(grids, torch.device("cpu"))
    assert first.shape == (9 * sum(h * w for h, w in grids), 4)
    assert gen.grid_anchors(grids, torch.device("cpu")) is first


def test_invalid_anchor_settings_raise():
    with pytest.raises(ValueError, match="one size per pyramid level"):
        AnchorGenerator(sizes=(32, 64), strides=(8,))
    with pytest.raises(ValueError, match="positive"):
        AnchorGenerator(ratios=(0.0, 1.0))
