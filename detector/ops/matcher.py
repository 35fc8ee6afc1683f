"""Anchor ↔ ground-truth assignment by IoU, for a whole batch at once."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou

from detector.ops.blocks import rows_per_block

BACKGROUND = -1
IGNORE = -2
LOW_QUALITY_MODES = ("none", "detectron", "detectron2")
CROWD_MODES = ("ignore", "background")


class IoUMatcher:
    """IoU ≥ fg_iou → the best ground truth's index; IoU < bg_iou → BACKGROUND (−1); else IGNORE (−2).

    The FL paper uses fg_iou = 0.5, bg_iou = 0.4. `low_quality_matches` names what happens to the
    anchors of each ground truth's highest IoU (ties included, IoU > 0), which then take their best
    ground truth:
      - "none": nothing; a ground truth with no anchor at fg_iou gets no positive.
      - "detectron" (the FL paper's code): they become positives only where their IoU is at least
        bg_iou, so low-quality matches survive in [bg_iou, fg_iou) (Detectron assigns them, then
        resets every anchor below bg_iou to background).
      - "detectron2" (also torchvision): they become positives at any IoU, as in Faster R-CNN; this
        keeps objects smaller than every anchor trainable.

    Crowd boxes are never matched. `crowd` names what becomes of the anchors on them:
      - "ignore": an anchor that would be background but lies at least `crowd_ioa` inside a crowd
        box (intersection / anchor area) is ignored;
      - "background": they stay background, as in Detectron, detectron2 and torchvision, which drop
        crowd annotations from training.
    """

    def __init__(
        self,
        fg_iou: float = 0.5,
        bg_iou: float = 0.4,
        low_quality_matches: str = "none",
        crowd: str = "ignore",
        crowd_ioa: float = 0.5,
    ):
        if not 0.0 <= bg_iou <= fg_iou <= 1.0:
            raise ValueError(f"matcher needs 0 <= bg_iou <= fg_iou <= 1, got bg_iou={bg_iou}, fg_iou={fg_iou}")
        if low_quality_matches not in LOW_QUALITY_MODES:
            raise ValueError(
                f"matcher low_quality_matches must be one of {list(LOW_QUALITY_MODES)}, got {low_quality_matches!r}"
            )
        if crowd not in CROWD_MODES:
            raise ValueError(f"matcher crowd must be one of {list(CROWD_MODES)}, got {crowd!r}")
        if not 0.0 < crowd_ioa <= 1.0:
            raise ValueError(f"matcher crowd_ioa must be in (0, 1], got {crowd_ioa}")
        self.fg_iou = fg_iou
        self.bg_iou = bg_iou
        self.low_quality_matches = low_quality_matches
        self.crowd = crowd
        self.crowd_ioa = crowd_ioa

    def __call__(self, anchors: Tensor, gt_boxes: Tensor, gt_valid: Tensor, gt_crowd: Tensor | None = None) -> Tensor:
        """
        Args:
            anchors: [A, 4] xyxy.
            gt_boxes: [B, G, 4] xyxy, padded; gt_valid [B, G] marks real boxes.
            gt_crowd: [B, G] bool, crowd boxes among the valid ones; None when there
                are none (the caller knows on the host: no crowd pass, no device round trip).
        Returns:
            matches [B, A] int64: ground-truth index in [0, G), BACKGROUND or IGNORE.
        """
        batch, num_gt = gt_valid.shape
        num_anchors = anchors.shape[0]
        if num_gt == 0:
            return torch.full((batch, num_anchors), BACKGROUND, dtype=torch.long, device=anchors.device)
        crowd = gt_crowd & gt_valid if gt_crowd is not None else torch.zeros_like(gt_valid)
        matchable = gt_valid & ~crowd
        iou = blockwise_box_iou(gt_boxes.reshape(-1, 4), anchors).view(batch, num_gt, num_anchors)
        iou.masked_fill_(~matchable.unsqueeze(-1), -1.0)  # (B, G, A)
        best_iou, best_gt = iou.max(dim=1)  # (B, A)
        matches = torch.where(
            best_iou >= self.fg_iou, best_gt, torch.where(best_iou >= self.bg_iou, IGNORE, BACKGROUND)
        )
        if self.low_quality_matches != "none":
            best_per_gt = iou.max(dim=2, keepdim=True).values  # (B, G, 1)
            is_best = ((iou == best_per_gt) & (best_per_gt > 0)).any(dim=1)  # (B, A)
            if self.low_quality_matches == "detectron":
                is_best &= best_iou >= self.bg_iou
            matches = torch.where(is_best, best_gt, matches)
        if gt_crowd is not None and self.crowd == "ignore":
            matches = ignore_crowd_regions(matches, gt_boxes, crowd, anchors, self.crowd_ioa)
        return matches


def ignore_crowd_regions(matches: Tensor, gt_boxes: Tensor, crowd: Tensor, anchors: Tensor, crowd_ioa: float) -> Tensor:
    """`matches` with each background anchor that lies at least `crowd_ioa` inside a crowd box
    (intersection / anchor area) set to IGNORE."""
    inside_crowd = _intersection_over_anchor(gt_boxes, anchors).masked_fill(~crowd.unsqueeze(-1), 0.0)
    in_crowd = inside_crowd.max(dim=1).values >= crowd_ioa
    return torch.where(in_crowd & (matches == BACKGROUND), IGNORE, matches)


def blockwise_box_iou(boxes: Tensor, anchors: Tensor, block_elements: int | None = None) -> Tensor:
    """torchvision's `box_iou` [N, 4] × [A, 4] → [N, A], called on blocks of anchors
    (`detector.ops.blocks`, or `block_elements` box × anchor pairs): its temporaries (corners,
    widths, intersections, unions: about nine floats per pair) then stay within a block. For a
    batch of 2 at 800×1333 with 200 boxes per image they would otherwise take about 3 GB. On the
    CPU the IoU there is 4× faster in blocks than in one call with glibc malloc, 1.15× with jemalloc
    (`detector benchmark --task matcher`)."""
    rows = rows_per_block(anchors.device, len(boxes), block_elements)
    if len(anchors) <= rows:
        return box_iou(boxes, anchors)
    iou = boxes.new_empty(len(boxes), len(anchors))
    for start in range(0, len(anchors), rows):
        iou[:, start : start + rows] = box_iou(boxes, anchors[start : start + rows])
    return iou


def _intersection_over_anchor(boxes: Tensor, anchors: Tensor) -> Tensor:
    """[B, G, 4], [A, 4] → [B, G, A]: area(box ∩ anchor) / area(anchor)."""
    top_left = torch.maximum(boxes[..., None, :2], anchors[:, :2])
    bottom_right = torch.minimum(boxes[..., None, 2:], anchors[:, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    area = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    return inter / area
