"""Classification and box subnets shared over pyramid levels."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _tower(in_channels: int, channels: int, num_convs: int, norm: str | None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(num_convs):
        layers.append(nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1))
        if norm == "gn":
            layers.append(nn.GroupNorm(32, channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class RetinaNetHead(nn.Module):
    """Two parallel towers of `num_convs` × (3×3 conv [+ GroupNorm] + ReLU), then a 3×3 predictor.

    Convs are initialised N(0, `init_std`) with bias 0 (the paper: 0.01 at 256 channels, where each
    tower conv scales its input by about 0.01·√(9·256)·0.7 ≈ 0.34); the last classification bias is
    b = −log((1 − π)/π) so that every anchor starts with foreground probability π
    (the FL paper, §4.1: π = 0.01; "plain CE without the prior diverges").

    The box predictor gives R-CNN deltas, or, with `reg_max` = n, GFL's general distribution: per side
    n + 1 logits over the distances 0…n in strides from the anchor centre (`detector.ops.distribution`;
    the paper: n = 16).

    Returns {"cls_logits" (B, H·W·A, K), and "box_deltas" (B, H·W·A, 4) or "box_distribution"
    (B, H·W·A, 4, n + 1)}, per-level tensors reshaped once and concatenated over levels in pyramid
    order (so anchor index = level offset + (y·W + x)·A + a). The key names the representation, so the
    criterion and the postprocessor decode what the model predicts.

    At inference under autocast the last classification conv runs in float32: scores from bf16
    logits take only a few hundred distinct values in [0.05, 1] and would tie in the COCO ranking.
    Training keeps it in the autocast dtype (the losses cast its rows to float32).
    """

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        num_convs: int = 4,
        channels: int = 256,
        norm: str | None = None,
        prior_prob: float = 0.01,
        init_std: float = 0.01,
        reg_max: int | None = None,
    ):
        super().__init__()
        if not init_std > 0.0:
            raise ValueError(f"head init_std must be > 0, got {init_std}")
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f"model prior_prob must be in (0, 1), got {prior_prob}")
        if norm not in (None, "gn"):
            raise ValueError(f"head norm must be null or 'gn', got {norm!r}")
        if num_convs < 0 or channels < 1:
            raise ValueError(f"head needs num_convs >= 0 and channels >= 1, got {num_convs}, {channels}")
        if norm == "gn" and channels % 32:
            raise ValueError(f"head channels must be a multiple of 32 for GroupNorm (32 groups), got {channels}")
        if reg_max is not None and reg_max < 1:
            raise ValueError(f"head reg_max must be null (box deltas) or >= 1 (GFL's distribution), got {reg_max}")
        self.num_classes = num_classes
        self.reg_max = reg_max
        self.box_output = "box_deltas" if reg_max is None else "box_distribution"
        self.box_width = 4 if reg_max is None else 4 * (reg_max + 1)
        self.cls_tower = _tower(in_channels, channels, num_convs, norm)
        self.box_tower = _tower(in_channels, channels, num_convs, norm)
        last = channels if num_convs > 0 else in_channels
        self.cls_logits = nn.Conv2d(last, num_anchors * num_classes, 3, padding=1)
        setattr(self, self.box_output, nn.Conv2d(last, num_anchors * self.box_width, 3, padding=1))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=init_std)
                nn.init.zeros_(module.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1.0 - prior_prob) / prior_prob))

    def forward(self, features: list[Tensor]) -> dict[str, Tensor]:
        box_predictor = getattr(self, self.box_output)
        cls_out, box_out = [], []
        for feature in features:
            cls_out.append(_to_anchor_rows(self._class_logits(self.cls_tower(feature)), self.num_classes))
            box_out.append(_to_anchor_rows(box_predictor(self.box_tower(feature)), self.box_width))
        box = torch.cat(box_out, dim=1)
        if self.reg_max is not None:
            box = box.unflatten(-1, (4, self.reg_max + 1))
        return {"cls_logits": torch.cat(cls_out, dim=1), self.box_output: box}

    def _class_logits(self, x: Tensor) -> Tensor:
        if self.training or not torch.is_autocast_enabled(x.device.type):
            return self.cls_logits(x)
        with torch.autocast(x.device.type, enabled=False):
            return self.cls_logits(x.float())


def _to_anchor_rows(x: Tensor, width: int) -> Tensor:
    batch, _, height, wide = x.shape
    x = x.view(batch, -1, width, height, wide)  # (B, A, K, H, W)
    return x.permute(0, 3, 4, 1, 2).reshape(batch, -1, width)  # (B, H·W·A, K)
