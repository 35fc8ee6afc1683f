"""RetinaNet (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017): predictions only.

Matching and losses live in `detector.losses.criterion`, decoding and NMS in
`detector.postprocess`, so any loss can train the same model and any model can be evaluated the
same way.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from detector.models.anchors import AnchorGenerator
from detector.models.backbone import ResNetBackbone


class RetinaNet(nn.Module):
    """ResNet → FPN (P3–P7) → shared head, with anchors for every output row.

    Args:
        num_classes: K, the number of foreground classes (from the annotation file).
        backbone: a module returning [C3, C4, C5] with an `out_channels` list.
        fpn: called as `fpn(in_channels=backbone.out_channels)`; returns a module with
            `out_channels` mapping [C3, C4, C5] to five levels.
        head: called as `head(in_channels=, num_anchors=, num_classes=, prior_prob=)`.
        anchor_generator: anchors for the five levels.
        prior_prob: π, the initial foreground probability of every anchor (the paper: 0.01).

    forward(images [B, 3, H, W]) returns the head's outputs (cls_logits [B, A_total, K] and box_deltas
    [B, A_total, 4] or box_distribution [B, A_total, 4, n + 1]) and
        anchors [A_total, 4] (xyxy pixels), anchor_strides [A_total] (each anchor's level stride),
        num_anchors_per_level list[int] (rows per level, in order P3…P7).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: ResNetBackbone,
        fpn: Callable[..., nn.Module],
        head: Callable[..., nn.Module],
        anchor_generator: AnchorGenerator,
        prior_prob: float = 0.01,
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.backbone = backbone
        self.fpn = fpn(in_channels=backbone.out_channels)
        self.head = head(
            in_channels=self.fpn.out_channels,
            num_anchors=anchor_generator.num_anchors_per_location,
            num_classes=num_classes,
            prior_prob=prior_prob,
        )
        self.anchor_generator = anchor_generator

    def forward(self, images: Tensor) -> dict:
        features = self.fpn(self.backbone(images))
        per_location = self.anchor_generator.num_anchors_per_location
        per_level = [f.shape[-2] * f.shape[-1] * per_location for f in features]
        anchors = self.anchor_generator(features, tuple(images.shape[-2:]))
        return {
            **self.head(features),
            "anchors": anchors,
            "anchor_strides": torch.cat(
                [anchors.new_full((n,), float(s)) for n, s in zip(per_level, self.anchor_generator.strides)]
            ),
            "num_anchors_per_level": per_level,
        }
