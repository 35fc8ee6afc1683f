"""From dense predictions to detections: threshold → top-k per level → decode → NMS → cap."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from detector.ops.box_coder import BoxCoder
from detector.ops.distribution import predicted_boxes


class RetinaNetPostProcessor:
    """The FL paper's inference (§5.1): keep scores > `score_thresh`, at most `topk_candidates`
    per pyramid level, decode, class-wise NMS at `nms_thresh`, at most `max_detections` per image.

    Boxes are decoded from the model's representation: box deltas with `box_coder`, or GFL's
    distribution by its integral (`detector.ops.distribution.predicted_boxes`).
    One `batched_nms` call covers the whole batch (boxes grouped by image and class).
    Returns, per image, {"boxes" [D, 4] xyxy clipped to the image, "scores" [D], "labels" [D]}
    in the pixels of the network input (before padding).
    """

    def __init__(
        self,
        box_coder: BoxCoder,
        score_thresh: float = 0.05,
        topk_candidates: int = 1000,
        nms_thresh: float = 0.5,
        max_detections: int = 100,
    ):
        if not 0.0 <= score_thresh < 1.0:
            raise ValueError(f"postprocess score_thresh must be in [0, 1), got {score_thresh}")
        if not 0.0 < nms_thresh <= 1.0:
            raise ValueError(f"postprocess nms_thresh must be in (0, 1], got {nms_thresh}")
        if topk_candidates < 1 or max_detections < 1:
            raise ValueError(
                "postprocess topk_candidates and max_detections must be >= 1, got "
                f"{topk_candidates} and {max_detections}"
            )
        self.box_coder = box_coder
        self.score_thresh = score_thresh
        self.topk_candidates = topk_candidates
        self.nms_thresh = nms_thresh
        self.max_detections = max_detections

    @torch.no_grad()
    def __call__(self, predictions: dict, image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        cls_logits = predictions["cls_logits"]  # (B, A, K)
        batch, num_anchors, num_classes = cls_logits.shape
        scores, anchor_idx, labels = [], [], []
        offset = 0
        for logits in cls_logits.split(predictions["num_anchors_per_level"], dim=1):
            level_scores = logits.float().sigmoid().flatten(1)  # (B, A_l·K); float32 scores
            k = min(self.topk_candidates, level_scores.shape[1])
            top_scores, top_idx = level_scores.topk(k, dim=1)  # (B, k)
            scores.append(top_scores)
            anchor_idx.append(top_idx // num_classes + offset)
            labels.append(top_idx % num_classes)
            offset += logits.shape[1]
        scores, anchor_idx, labels = torch.cat(scores, 1), torch.cat(anchor_idx, 1), torch.cat(labels, 1)  # (B, N)

        rows = anchor_idx + num_anchors * torch.arange(batch, device=anchor_idx.device).unsqueeze(1)  # into B·A
        boxes = predicted_boxes(predictions, rows.flatten(), self.box_coder).view(batch, -1, 4)  # (B, N, 4)
        sizes = torch.as_tensor(image_sizes, dtype=boxes.dtype, device=boxes.device)  # (B, 2) as (h, w)
        upper = sizes.flip(1).repeat(1, 2).unsqueeze(1)  # (B, 1, 4) as (w, h, w, h)
        boxes = torch.minimum(boxes.clamp(min=0), upper)

        image_idx, candidate = torch.nonzero(scores > self.score_thresh, as_tuple=True)
        boxes, scores, labels = boxes[image_idx, candidate], scores[image_idx, candidate], labels[image_idx, candidate]
        keep = batched_nms(boxes, scores, image_idx * num_classes + labels, self.nms_thresh)  # by score
        keep = keep[torch.sort(image_idx[keep], stable=True).indices]  # by image, then score
        counts = torch.bincount(image_idx[keep], minlength=batch)
        starts = counts.cumsum(0) - counts
        rank = torch.arange(len(keep), device=keep.device) - starts[image_idx[keep]]
        keep = keep[rank < self.max_detections]
        per_image = counts.clamp(max=self.max_detections).tolist()
        return [
            {"boxes": b, "scores": s, "labels": c}
            for b, s, c in zip(
                boxes[keep].split(per_image), scores[keep].split(per_image), labels[keep].split(per_image)
            )
        ]
