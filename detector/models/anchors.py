"""Anchor boxes for P3–P7: `scales_per_octave` scales × len(ratios) aspect ratios per location."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


class AnchorGenerator(nn.Module):
    """Anchors in xyxy pixels, ordered level → (y, x) → (ratio, scale), matching the head's rows.

    On level l an anchor of ratio r = h/w and scale s = 2^(i/scales_per_octave) has area
    (sizes[l]·s)² and is centred at ((x + offset)·stride, (y + offset)·stride). The paper:
    sizes 32–512 on strides 8–128, 3 scales, ratios {1:2, 1:1, 2:1}, offset 0.

    A level's size may also be a list, its anchor sizes given explicitly (scales_per_octave is
    then unused), and `round` rounds the anchors' corners to integers: torchvision's RetinaNet
    uses both, sizes (x, int(x·2^⅓), int(x·2^⅔)) and rounded anchors. torchvision also takes
    each level's stride, per axis, as image size // grid size, which differs from the nominal
    stride when the padded image is not a multiple of it (P6, P7 of an 800-px side: 61, 114);
    `stride_from_image_size` does the same.

    Anchors are cached per set of feature-map sizes and device.
    """

    def __init__(
        self,
        sizes: Sequence[float] = (32, 64, 128, 256, 512),
        scales_per_octave: int = 3,
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        offset: float = 0.0,
        round: bool = False,
        stride_from_image_size: bool = False,
    ):
        super().__init__()
        if len(sizes) != len(strides):
            raise ValueError(
                f"anchors need one size per pyramid level: {len(sizes)} sizes for "
                f"{len(strides)} strides {list(strides)}"
            )
        scales = [2.0 ** (i / scales_per_octave) for i in range(max(scales_per_octave, 1))]
        level_sizes = [
            [size * s for s in scales] if isinstance(size, (int, float)) else [float(v) for v in size] for size in sizes
        ]
        if len({len(level) for level in level_sizes}) != 1:
            raise ValueError(f"every level needs the same number of anchor sizes, got {[list(v) for v in level_sizes]}")
        if (
            min(min(level) for level in level_sizes) <= 0
            or min(strides) <= 0
            or scales_per_octave < 1
            or not ratios
            or min(ratios) <= 0
        ):
            raise ValueError(
                "anchor sizes, strides and ratios must be positive and scales_per_octave >= 1; "
                f"got sizes={list(sizes)}, strides={list(strides)}, ratios={list(ratios)}, "
                f"scales_per_octave={scales_per_octave}"
            )
        if not 0.0 <= offset < 1.0:
            raise ValueError(f"anchor offset must be in [0, 1), got {offset}")
        self.strides = tuple(int(s) for s in strides)
        self.offset = offset
        self.stride_from_image_size = stride_from_image_size
        self.cell_anchors = [self._cell_anchors(level, ratios, round) for level in level_sizes]
        self.num_anchors_per_location = len(level_sizes[0]) * len(ratios)
        self._cache: dict[tuple, Tensor] = {}

    @staticmethod
    def _cell_anchors(sizes: list[float], ratios: Sequence[float], round: bool) -> Tensor:
        boxes = []
        for ratio in ratios:
            for size in sizes:
                w = size / math.sqrt(ratio)
                h = size * math.sqrt(ratio)
                boxes.append([-w / 2, -h / 2, w / 2, h / 2])
        cell = torch.tensor(boxes, dtype=torch.float64)
        return cell.round() if round else cell

    def grid_anchors(
        self,
        grid_sizes: Sequence[tuple[int, int]],
        device: torch.device,
        strides: Sequence[tuple[int, int]] | None = None,
    ) -> Tensor:
        """[sum over levels of H·W·A, 4] anchors (float32) for feature maps of `grid_sizes`, with
        (y, x) `strides` per level (default: the nominal ones)."""
        strides = tuple(strides or ((s, s) for s in self.strides))
        key = (tuple(grid_sizes), strides, str(device))
        if key not in self._cache:
            if len(self._cache) >= 32:
                self._cache.clear()
            levels = []
            for (height, width), (stride_y, stride_x), cell in zip(grid_sizes, strides, self.cell_anchors):
                ys = (torch.arange(height, dtype=torch.float64) + self.offset) * stride_y
                xs = (torch.arange(width, dtype=torch.float64) + self.offset) * stride_x
                y, x = torch.meshgrid(ys, xs, indexing="ij")
                centers = torch.stack([x, y, x, y], dim=-1).reshape(-1, 1, 4)  # (H·W, 1, 4)
                levels.append((centers + cell.view(1, -1, 4)).reshape(-1, 4))  # (H·W·A, 4)
            self._cache[key] = torch.cat(levels).to(device=device, dtype=torch.float32)
        return self._cache[key]

    def forward(self, features: list[Tensor], image_size: tuple[int, int] | None = None) -> Tensor:
        if len(features) != len(self.strides):
            raise ValueError(f"{len(features)} feature maps for {len(self.strides)} anchor levels")
        grids = [tuple(f.shape[-2:]) for f in features]
        strides = None
        if self.stride_from_image_size:
            if image_size is None:
                raise ValueError("anchor_generator.stride_from_image_size needs the image size")
            strides = [(int(image_size[0]) // h, int(image_size[1]) // w) for h, w in grids]
        return self.grid_anchors(grids, features[0].device, strides)
