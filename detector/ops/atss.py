"""Adaptive Training Sample Selection (Zhang et al., "Bridging the Gap Between Anchor-based and
Anchor-free Detection via Adaptive Training Sample Selection", CVPR 2020), batched over images."""

from __future__ import annotations

import torch
from torch import Tensor

from detector.ops.matcher import BACKGROUND, CROWD_MODES, blockwise_box_iou, ignore_crowd_regions


class ATSSMatcher:
    """For each ground truth, the `topk` anchors of each pyramid level whose centres lie nearest its
    centre are its candidates; its IoU threshold is the mean plus the (sample) standard deviation
    of their IoUs; a candidate whose IoU reaches the threshold and whose centre lies inside the box
    (at least 0.01 px from every side, as in mmdetection) is a positive of it. An anchor positive
    for several boxes takes the one of highest IoU. Every other anchor is BACKGROUND: there is no
    ignore band. Default topk = 9 (the paper's).

    Crowd boxes are never matched; `crowd` and `crowd_ioa` act as in `IoUMatcher`. Needs the anchors
    per level (`needs_levels`: the criterion passes the model's `num_anchors_per_level`).
    """

    needs_levels = True

    def __init__(self, topk: int = 9, crowd: str = "ignore", crowd_ioa: float = 0.5):
        if topk < 1:
            raise ValueError(f"matcher topk must be >= 1, got {topk}")
        if crowd not in CROWD_MODES:
            raise ValueError(f"matcher crowd must be one of {list(CROWD_MODES)}, got {crowd!r}")
        if not 0.0 < crowd_ioa <= 1.0:
            raise ValueError(f"matcher crowd_ioa must be in (0, 1], got {crowd_ioa}")
        self.topk, self.crowd, self.crowd_ioa = topk, crowd, crowd_ioa

    def __call__(
        self,
        anchors: Tensor,
        gt_boxes: Tensor,
        gt_valid: Tensor,
        gt_crowd: Tensor | None = None,
        *,
        num_anchors_per_level: list[int],
    ) -> Tensor:
        """Args as `IoUMatcher`'s, plus the rows per level (P3…P7 order, summing to A). Returns
        matches [B, A]: ground-truth index, BACKGROUND or IGNORE."""
        batch, num_gt = gt_valid.shape
        num_anchors = anchors.shape[0]
        if sum(num_anchors_per_level) != num_anchors:
            raise ValueError(
                f"num_anchors_per_level {num_anchors_per_level} sums to {sum(num_anchors_per_level)}, "
                f"not to the {num_anchors} anchors"
            )
        if num_gt == 0:
            return torch.full((batch, num_anchors), BACKGROUND, dtype=torch.long, device=anchors.device)
        crowd = gt_crowd & gt_valid if gt_crowd is not None else torch.zeros_like(gt_valid)
        matchable = gt_valid & ~crowd
        iou = blockwise_box_iou(gt_boxes.reshape(-1, 4), anchors).view(batch, num_gt, num_anchors)
        anchor_centres = (anchors[:, :2] + anchors[:, 2:]) / 2  # (A, 2)
        gt_centres = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2  # (B, G, 2)
        distance = torch.cdist(
            gt_centres.reshape(-1, 2),
            anchor_centres,  # differences, not |a|² + |b|² − 2ab
            compute_mode="donot_use_mm_for_euclid_dist",
        ).view(batch, num_gt, num_anchors)
        candidates = []
        starts = [sum(num_anchors_per_level[:level]) for level in range(len(num_anchors_per_level))]
        for start, count in zip(starts, num_anchors_per_level):
            k = min(self.topk, count)
            nearest = distance[..., start : start + count].topk(k, dim=-1, largest=False).indices  # (B, G, k)
            candidates.append(nearest + start)
        candidates = torch.cat(candidates, dim=-1)  # (B, G, C)
        candidate_iou = iou.gather(2, candidates)
        spread = candidate_iou.std(-1, keepdim=True) if candidates.shape[-1] > 1 else torch.zeros_like(candidate_iou)
        threshold = candidate_iou.mean(-1, keepdim=True) + spread  # (B, G, 1)
        centres = anchor_centres[candidates]  # (B, G, C, 2)
        inside = torch.minimum(centres - gt_boxes[..., None, :2], gt_boxes[..., None, 2:] - centres).amin(-1) > 0.01
        chosen = (candidate_iou >= threshold) & inside & matchable.unsqueeze(-1)  # (B, G, C)
        positive_iou = torch.full_like(iou, -1.0).scatter_(2, candidates, torch.where(chosen, candidate_iou, -1.0))
        best_iou, best_gt = positive_iou.max(dim=1)  # (B, A)
        matches = torch.where(best_iou >= 0, best_gt, BACKGROUND)
        if gt_crowd is not None and self.crowd == "ignore":
            matches = ignore_crowd_regions(matches, gt_boxes, crowd, anchors, self.crowd_ioa)
        return matches
