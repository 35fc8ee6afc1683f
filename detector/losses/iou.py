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
  Alpha-IoU  each term of IoU, GIoU, DIoU or CIoU to the power α = 3  (He et al., NeurIPS 2021)
  SIoU  1 − IoU + (distance cost under the angle cost + shape cost) / 2  (Gevorgyan, arXiv 2205.12740)
  Wise-IoU  exp(ρ²/c²*) · (1 − IoU), v3 × a focusing factor of (1 − IoU) over its running mean  (Tong et al. 2023)
  MPDIoU  1 − (IoU − d₁²/(w² + h²) − d₂²/(w² + h²)), (h, w) the input image  (Ma and Xu, arXiv 2307.07662)

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
    center_dist2 = (
        (pred[:, 0] + pred[:, 2] - target[:, 0] - target[:, 2]) ** 2
        + (pred[:, 1] + pred[:, 3] - target[:, 1] - target[:, 3]) ** 2
    ) / 4
    return BoxGeometry(inter / (union + EPS), union, enclosing_w, enclosing_h, center_dist2, w, h, w_gt, h_gt)


class _IoUFamilyLoss(nn.Module):
    input_space = "xyxy"

    def per_box(self, pred: Tensor, target: Tensor, geo: BoxGeometry) -> Tensor:
        raise NotImplementedError

    def forward(self, pred: Tensor, target: Tensor, normalizer: Tensor | float) -> Tensor:
        return self.per_box(pred, target, box_geometry(pred, target)).sum() / normalizer


def _diagonal2(geo: BoxGeometry) -> Tensor:
    return geo.enclosing_w**2 + geo.enclosing_h**2 + EPS


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
        v = (4 / math.pi**2) * (torch.atan(geo.w_gt / (geo.h_gt + EPS)) - torch.atan(geo.w / (geo.h + EPS))) ** 2
        with torch.no_grad():
            alpha = v / (1 - geo.iou + v + EPS)
        return 1 - geo.iou + geo.center_dist2 / _diagonal2(geo) + alpha * v


class EIoULoss(_IoUFamilyLoss):
    """1 − IoU + ρ²/c² + (w − w_gt)²/C_w² + (h − h_gt)²/C_h²."""

    def per_box(self, pred, target, geo):
        return (
            1
            - geo.iou
            + geo.center_dist2 / _diagonal2(geo)
            + (geo.w - geo.w_gt) ** 2 / (geo.enclosing_w**2 + EPS)
            + (geo.h - geo.h_gt) ** 2 / (geo.enclosing_h**2 + EPS)
        )


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
        distance = sum(torch.sqrt(dx**2 + dy**2 + 1e-12) for dx, dy in corners)  # finite gradient at 0
        return 1 - geo.iou + self.lam * distance / (4 * torch.sqrt(_diagonal2(geo)))


class AlphaIoULoss(_IoUFamilyLoss):
    """Alpha-IoU (He et al., NeurIPS 2021): every term of an IoU loss raised to the power α
    (default 3, the paper's), with `base` one of
        iou   1 − IoU^α
        giou  1 − IoU^α + (|C ∖ (A ∪ B)| / |C|)^α
        diou  1 − IoU^α + (ρ²/c²)^α
        ciou  1 − IoU^α + (ρ²/c²)^α + (β·v)^α, β = v/((1 − IoU) + v) without gradient (the official code).
    α = 1 gives the plain losses (IoU in its linear form)."""

    def __init__(self, alpha: float = 3.0, base: str = "iou"):
        super().__init__()
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        if base not in ("iou", "giou", "diou", "ciou"):
            raise ValueError(f"base must be one of ['iou', 'giou', 'diou', 'ciou'], got {base!r}")
        self.alpha, self.base = alpha, base

    def _power(self, x: Tensor) -> Tensor:
        return x.clamp(min=EPS) ** self.alpha  # finite gradient at 0 for α < 1

    def per_box(self, pred, target, geo):
        loss = 1 - self._power(geo.iou)
        if self.base == "giou":
            area_c = geo.enclosing_w * geo.enclosing_h + EPS
            loss = loss + self._power((area_c - geo.union) / area_c)
        elif self.base in ("diou", "ciou"):
            loss = loss + self._power(geo.center_dist2 / _diagonal2(geo))
        if self.base == "ciou":
            v = (4 / math.pi**2) * (torch.atan(geo.w_gt / (geo.h_gt + EPS)) - torch.atan(geo.w / (geo.h + EPS))) ** 2
            with torch.no_grad():
                beta = v / (1 - geo.iou + v + EPS)
            loss = loss + self._power(beta * v)
        return loss


class SIoULoss(_IoUFamilyLoss):
    """SIoU (Gevorgyan, arXiv 2205.12740): 1 − IoU + (Δ + Ω)/2 with
    angle cost    Λ = 1 − 2 sin²(arcsin(sin α) − π/4) = sin 2α = 2 |dx·dy| / (dx² + dy²),
                  (dx, dy) the offset between the centres, α its angle to either axis;
    distance cost Δ = Σ_{t∈x,y} (1 − exp(−(2 − Λ) ρ_t)), ρ_x = (dx / C_w)², ρ_y = (dy / C_h)²;
    shape cost    Ω = Σ_{t∈w,h} (1 − exp(−ω_t))^θ, ω_w = |w − w_gt| / max(w, w_gt), θ = 4 (default)."""

    def __init__(self, theta: float = 4.0):
        super().__init__()
        if theta <= 0:
            raise ValueError(f"theta must be > 0, got {theta}")
        self.theta = theta

    def per_box(self, pred, target, geo):
        dx = (pred[:, 0] + pred[:, 2] - target[:, 0] - target[:, 2]) / 2
        dy = (pred[:, 1] + pred[:, 3] - target[:, 1] - target[:, 3]) / 2
        angle = 2 * (dx * dy).abs() / (dx * dx + dy * dy + EPS)
        gamma = 2 - angle
        distance = (
            2
            - torch.exp(-gamma * (dx / (geo.enclosing_w + EPS)) ** 2)
            - torch.exp(-gamma * (dy / (geo.enclosing_h + EPS)) ** 2)
        )
        omega_w = (geo.w - geo.w_gt).abs() / (torch.maximum(geo.w, geo.w_gt) + EPS)
        omega_h = (geo.h - geo.h_gt).abs() / (torch.maximum(geo.h, geo.h_gt) + EPS)
        shape = (1 - torch.exp(-omega_w)) ** self.theta + (1 - torch.exp(-omega_h)) ** self.theta
        return 1 - geo.iou + (distance + shape) / 2


class WiseIoULoss(_IoUFamilyLoss):
    """Wise-IoU (Tong et al., arXiv 2301.10051).
        v1  R · (1 − IoU), R = exp(ρ² / (W_g² + H_g²)*), W_g, H_g the enclosing box, * without gradient;
        v3  r · v1, r = β / (δ · a^(β − δ)), β = (1 − IoU)* / m, m the running mean of (1 − IoU)
            over batches: m ← (1 − μ) m + μ · mean(1 − IoU), advanced (in training) before β is taken.
    Defaults a = 1.9, δ = 3, μ = 1 − 0.5^(1/7000) (a half-life of 7,000 batches), m starts at 1: the
    official code's. m is a buffer, saved in checkpoints; under DDP each process keeps its own, like GHM."""

    def __init__(self, version: int = 3, a: float = 1.9, delta: float = 3.0, momentum: float = 1 - 0.5 ** (1 / 7000)):
        super().__init__()
        if version not in (1, 3):
            raise ValueError(f"version must be 1 or 3, got {version}")
        if a <= 0 or delta <= 0 or not 0 < momentum <= 1:
            raise ValueError(f"Wise-IoU needs a > 0, delta > 0 and momentum in (0, 1], got {a}, {delta}, {momentum}")
        self.version, self.a, self.delta, self.momentum = version, a, delta, momentum
        self.register_buffer("iou_loss_mean", torch.tensor(1.0, dtype=torch.float64))

    def per_box(self, pred, target, geo):
        iou_loss = 1 - geo.iou
        focus = torch.exp(geo.center_dist2 / (geo.enclosing_w**2 + geo.enclosing_h**2 + EPS).detach())
        loss = focus * iou_loss
        if self.version == 1:
            return loss
        if self.training and len(iou_loss):
            batch_mean = iou_loss.detach().mean().to(self.iou_loss_mean.dtype)
            self.iou_loss_mean.copy_((1 - self.momentum) * self.iou_loss_mean + self.momentum * batch_mean)
        beta = iou_loss.detach() / self.iou_loss_mean.to(iou_loss.dtype)
        return beta / (self.delta * self.a ** (beta - self.delta)) * loss


class MPDIoULoss(_IoUFamilyLoss):
    """MPDIoU (Ma and Xu, arXiv 2307.07662): 1 − (IoU − d₁²/(w² + h²) − d₂²/(w² + h²)), d₁ and d₂ the
    distances between the top-left and between the bottom-right corners, (h, w) the size of the
    positive's input image, which the criterion passes because `needs_image_size` is set."""

    needs_image_size = True

    def forward(self, pred: Tensor, target: Tensor, normalizer: Tensor | float, *, image_size: Tensor) -> Tensor:
        geo = box_geometry(pred, target)
        d1 = (pred[:, 0] - target[:, 0]) ** 2 + (pred[:, 1] - target[:, 1]) ** 2
        d2 = (pred[:, 2] - target[:, 2]) ** 2 + (pred[:, 3] - target[:, 3]) ** 2
        diagonal2 = (image_size.to(pred.dtype) ** 2).sum(dim=1)  # h² + w²
        return (1 - (geo.iou - d1 / diagonal2 - d2 / diagonal2)).sum() / normalizer
