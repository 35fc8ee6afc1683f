"""IoU-family box losses on decoded boxes (xyxy pixels): one shared forward, one formula each.

Every loss here is Σ_i L(pred_i, target_i) / normalizer over the P positive anchors; the
criterion decodes the predicted deltas because `input_space` is "xyxy". With w, h the box sizes,
ρ the distance between centres and (C_w, C_h, c) the width, height and diagonal of the smallest
enclosing box:

  IoU   −ln IoU (UnitBox, Yu et al. 2016), or 1 − IoU with mode="linear"
  GIoU  1 − IoU + |C ∖ (A ∪ B)| / |C|                          (Rezatofighi et al., CVPR 2019)
  DIoU  1 − IoU + ρ²/c²                                        (Zheng et al., AAAI 2020)
  CIoU  DIoU + α·v, v = 4/π²·(atan(w_gt/h_gt) − atan(w/h))², α = v/((1 − IoU) + v), α without gradient
  EIoU  1 − IoU + ρ²/c² + (w − w_gt)²/C_w² + (h − h_gt)²/C_h²  (Zhang et al., arXiv 2101.08158)
  Focal-EIoU  IoU^γ · EIoU, IoU without gradient in the weight, γ = 0.5
  CDIoU 1 − IoU + λ · (mean distance of the four corner pairs) / c  (Chen et al., arXiv 2103.11696)

EIoU here is "Efficient IoU", not the unrelated "Extended IoU" of some codebases.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

EPS = 1e-7


class BoxGeometry(NamedTuple):
    iou: Tensor  # (P,)
    union: Tensor
    enclosing_w: Tensor
    enclosing_h: Tensor
    center_dist2: Tensor  # ρ²
    w: Tensor
    h: Tensor
    w_gt: Tensor
    h_gt: Tensor


def box_geometry(pred: Tensor, target: Tensor) -> BoxGeometry:
    """Pairwise (row-by-row) geometry of two [P, 4] xyxy box sets."""
    w, h = (pred[:, 2] - pred[:, 0]).clamp(min=0), (pred[:, 3] - pred[:, 1]).clamp(min=0)
    w_gt, h_gt = (target[:, 2] - target[:, 0]).clamp(min=0), (target[:, 3] - target[:, 1]).clamp(min=0)
    inter_w = (torch.minimum(pred[:, 2], target[:, 2]) - torch.maximum(pred[:, 0], target[:, 0])).clamp(min=0)
    inter_h = (torch.minimum(pred[:, 3], target[:, 3]) - torch.maximum(pred[:, 1], target[:, 1])).clamp(min=0)
    inter = inter_w * inter_h
    union = w * h + w_gt * h_gt - inter
    enclosing_w = torch.maximum(pred[:, 2], target[:, 2]) - torch.minimum(pred[:, 0], target[:, 0])
    enclosing_h = torch.maximum(pred[:, 3], target[:, 3]) - torch.minimum(pred[:, 1], target[:, 1])
    center_dist2 = ((pred[:, 0] + pred[:, 2] - target[:, 0] - target[:, 2]) ** 2
                    + (pred[:, 1] + pred[:, 3] - target[:, 1] - target[:, 3]) ** 2) / 4
    return BoxGeometry(inter / (union + EPS), union, enclosing_w, enclosing_h, center_dist2, w, h, w_gt, h_gt)


class _IoUFamilyLoss(nn.Module):
    input_space = "xyxy"

    def per_box(self, pred: Tensor, target: Tensor, geo: BoxGeometry) -> Tensor:
        raise NotImplementedError

    def forward(self, pred: Tensor, target: Tensor, normalizer: Tensor | float) -> Tensor:
        return self.per_box(pred, target, box_geometry(pred, target)).sum() / normalizer


def _diagonal2(geo: BoxGeometry) -> Tensor:
    return geo.enclosing_w ** 2 + geo.enclosing_h ** 2 + EPS


class IoULoss(_IoUFamilyLoss):
    """−ln IoU (mode="log", UnitBox; default) or 1 − IoU (mode="linear")."""

    def __init__(self, mode: str = "log"):
        super().__init__()
        if mode not in ("log", "linear"):
            raise ValueError(f"mode must be 'log' or 'linear', got {mode!r}")
        self.mode = mode

    def per_box(self, pred, target, geo):
        return -torch.log(geo.iou.clamp(min=EPS)) if self.mode == "log" else 1 - geo.iou


class GIoULoss(_IoUFamilyLoss):
    """1 − IoU + |C ∖ (A ∪ B)| / |C|."""

    def per_box(self, pred, target, geo):
        area_c = geo.enclosing_w * geo.enclosing_h + EPS
        return 1 - geo.iou + (area_c - geo.union) / area_c


class DIoULoss(_IoUFamilyLoss):
    """1 − IoU + ρ²/c²."""

    def per_box(self, pred, target, geo):
        return 1 - geo.iou + geo.center_dist2 / _diagonal2(geo)


class CIoULoss(_IoUFamilyLoss):
    """DIoU + α·v with v = 4/π²·(atan(w_gt/h_gt) − atan(w/h))² and α = v/((1 − IoU) + v), α
    computed without gradient as in the paper."""

    def per_box(self, pred, target, geo):
        v = (4 / math.pi ** 2) * (torch.atan(geo.w_gt / (geo.h_gt + EPS)) - torch.atan(geo.w / (geo.h + EPS))) ** 2
        with torch.no_grad():
            alpha = v / (1 - geo.iou + v + EPS)
        return 1 - geo.iou + geo.center_dist2 / _diagonal2(geo) + alpha * v


class EIoULoss(_IoUFamilyLoss):
    """1 − IoU + ρ²/c² + (w − w_gt)²/C_w² + (h − h_gt)²/C_h²."""

    def per_box(self, pred, target, geo):
        return (1 - geo.iou + geo.center_dist2 / _diagonal2(geo)
                + (geo.w - geo.w_gt) ** 2 / (geo.enclosing_w ** 2 + EPS)
                + (geo.h - geo.h_gt) ** 2 / (geo.enclosing_h ** 2 + EPS))


class FocalEIoULoss(EIoULoss):
    """IoU^γ · L_EIoU with the IoU weight detached; default γ = 0.5 (Zhang et al.)."""

    def __init__(self, gamma: float = 0.5):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = gamma

    def per_box(self, pred, target, geo):
        return geo.iou.detach().clamp(min=0) ** self.gamma * super().per_box(pred, target, geo)


class CDIoULoss(_IoUFamilyLoss):
    """1 − IoU + λ · diou, diou = (Σ over the four corner pairs of their distance) / (4 c).
    Default λ = 1."""

    def __init__(self, lam: float = 1.0):
        super().__init__()
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        self.lam = lam

    def per_box(self, pred, target, geo):
        x1, y1, x2, y2 = pred.unbind(1)
        u1, v1, u2, v2 = target.unbind(1)
        corners = [(x1 - u1, y1 - v1), (x2 - u2, y1 - v1), (x2 - u2, y2 - v2), (x1 - u1, y2 - v2)]
        distance = sum(torch.sqrt(dx ** 2 + dy ** 2 + 1e-12) for dx, dy in corners)  # finite gradient at 0
        return 1 - geo.iou + self.lam * distance / (4 * torch.sqrt(_diagonal2(geo)))
