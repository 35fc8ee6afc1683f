"""Online hard example mining over anchors: the FL paper's Table 1d baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms


class OHEMLoss(nn.Module):
    """OHEM (Shrivastava et al., CVPR 2016) as the FL paper ran it against FL (§5.1, Table 1d):
    every non-ignored anchor is scored by its cross-entropy summed over classes; optionally, NMS
    on those losses (IoU `nms_thresh` between anchors) removes anchors that overlap a harder one;
    then each image keeps its `batch_size_per_image` = k hardest anchors. With `neg_pos_ratio` = r
    (the paper's "1:3" is r = 3), an image keeps its P = min(positives, ⌊k/(1 + r)⌋) hardest
    positives and at most ⌊r·P⌋ hardest negatives, within k in all: at most r negatives per
    positive, as in SSD's hard negative mining (an image without positives keeps no anchor).
    Loss = Σ CE over the kept anchors / normalizer.

    Needs each row's image and anchor box: the criterion passes them because `needs_anchors`
    is set. Defaults: 128 per image, NMS 0.5, no ratio (the paper's best OHEM row, 32.8 AP).
    """

    needs_anchors = True

    def __init__(
        self, batch_size_per_image: int = 128, neg_pos_ratio: float | None = None, nms_thresh: float | None = 0.5
    ):
        super().__init__()
        if batch_size_per_image < 1:
            raise ValueError(f"batch_size_per_image must be >= 1, got {batch_size_per_image}")
        if neg_pos_ratio is not None and neg_pos_ratio < 0:
            raise ValueError(f"neg_pos_ratio must be >= 0 or null, got {neg_pos_ratio}")
        if nms_thresh is not None and not 0.0 < nms_thresh <= 1.0:
            raise ValueError(f"nms_thresh must be in (0, 1] or null, got {nms_thresh}")
        self.batch_size_per_image = batch_size_per_image
        self.neg_pos_ratio = neg_pos_ratio
        self.nms_thresh = nms_thresh

    def forward(
        self, logits: Tensor, targets: Tensor, normalizer: Tensor | float, *, image_index: Tensor, anchors: Tensor
    ) -> Tensor:
        ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(dim=1)  # (M,)
        return ce[self.select(ce.detach(), targets.amax(dim=1) > 0, image_index, anchors)].sum() / normalizer

    def select(self, scores: Tensor, positive: Tensor, image_index: Tensor, anchors: Tensor) -> Tensor:
        """Indices of the kept rows: per image (and per label when a ratio is set), the hardest first."""
        candidates = torch.arange(len(scores), device=scores.device)
        if self.nms_thresh is not None and len(scores):
            candidates = batched_nms(anchors.float(), scores.float(), image_index, self.nms_thresh)
        k = self.batch_size_per_image
        num_images = int(image_index.max()) + 1 if len(image_index) else 0
        image, is_positive = image_index[candidates], positive[candidates]
        if self.neg_pos_ratio is None:
            group = image
            quota = torch.full((num_images,), k, device=scores.device)
        else:
            group = image * 2 + is_positive.long()  # (image, is positive)
            pos_available = torch.bincount(image[is_positive], minlength=num_images)
            pos_quota = pos_available.clamp(max=int(k / (1 + self.neg_pos_ratio)))
            neg_quota = torch.minimum(k - pos_quota, (pos_quota * self.neg_pos_ratio).floor().long())
            quota = torch.stack([neg_quota, pos_quota], dim=1).flatten()  # (2·images,)
        hardest_first = torch.sort(scores[candidates], descending=True, stable=True).indices
        by_loss, groups = candidates[hardest_first], group[hardest_first]
        order = torch.sort(groups, stable=True).indices  # by group, hardest first within each
        by_loss, groups = by_loss[order], groups[order]
        counts = torch.bincount(groups, minlength=len(quota))
        starts = counts.cumsum(0) - counts
        rank = torch.arange(len(groups), device=scores.device) - starts[groups]
        return by_loss[rank < quota[groups]]
