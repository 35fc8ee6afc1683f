"""Feature pyramid P3–P7 on top of C3–C5, from torchvision's FPN building blocks."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7


class RetinaNetFPN(nn.Module):
    """P3–P5 from lateral 1×1 + top-down + 3×3 output convs; P6 = 3×3/2 conv, P7 = ReLU → 3×3/2 conv.

    Args:
        in_channels: channels of C3, C4, C5.
        out_channels: channels of every pyramid level (256 in the paper).
        p6_from: "c5" (the paper) or "p5" (torchvision's v1 RetinaNet).
        norm: None or "gn" (GroupNorm, 32 groups, after each FPN conv; helps training from scratch).
    """

    strides = (8, 16, 32, 64, 128)

    def __init__(self, in_channels: list[int], out_channels: int = 256, p6_from: str = "c5", norm: str | None = None):
        super().__init__()
        if p6_from not in ("c5", "p5"):
            raise ValueError(f"fpn p6_from must be 'c5' or 'p5', got {p6_from!r}")
        if norm not in (None, "gn"):
            raise ValueError(f"fpn norm must be null or 'gn', got {norm!r}")
        if out_channels < 1 or (norm == "gn" and out_channels % 32):
            raise ValueError(f"fpn out_channels must be >= 1 (a multiple of 32 with GroupNorm), got {out_channels}")
        extra = LastLevelP6P7(in_channels[-1] if p6_from == "c5" else out_channels, out_channels)
        extra.use_P5 = p6_from == "p5"  # explicit: torchvision otherwise infers it from channel counts
        norm_layer = (lambda channels: nn.GroupNorm(32, channels)) if norm == "gn" else None
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=extra, norm_layer=norm_layer)
        self.out_channels = out_channels

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        named = OrderedDict((f"c{level}", f) for level, f in zip((3, 4, 5), features))
        return list(self.fpn(named).values())
