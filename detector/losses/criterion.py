"""RetinaNet criterion: anchors ↔ ground truth, then one classification and one box loss."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from detector.losses.distribution import DistributionFocalLoss
from detector.losses.iou import box_geometry
from detector.ops.atss import ATSSMatcher
from detector.ops.box_coder import BoxCoder
from detector.ops.distribution import boxes_to_distances, predicted_boxes
from detector.ops.matcher import IGNORE, IoUMatcher


class RetinaNetCriterion(nn.Module):
    """Turns model outputs and targets into {"loss_cls", "loss_box", "num_pos", "num_neg"} (and "loss_dfl" for
    a distribution head, below): the losses,
    the positive anchors and the negative (anchor, class) elements of the kept anchors (kept anchors
    × K − positives; their ratio is the imbalance the FL paper is about; OHEM then keeps a few).

    Labels follow detectron2's convention: each anchor is a positive (matched ground truth),
    a negative, or ignored (IoU in the ignore band, or inside a crowd region under the
    matcher's crowd="ignore"). The
    classification loss sees the non-ignored anchors; the box loss sees the positives, as
    deltas or as decoded boxes, whichever the loss's `input_space` asks for. A classification
    loss that sets `needs_anchors` (OHEM) also receives each row's `image_index` and anchor box; a
    box loss that sets `needs_image_size` (MPDIoU) receives each positive's input image (h, w).

    A loss whose `per_level` attribute is true (GHM-C and GHM-R by default) is called once per FPN
    level, on that level's rows of the whole batch (`outputs["num_anchors_per_level"]`), and the
    level losses are summed: the official GHM code does this (`multi_apply` over levels), so each
    call has its own element count N and advances the loss's EMA once per level.

    With `cls_target="iou"` a positive's target on its class is the IoU of its decoded predicted box
    with its ground truth, without gradient, instead of 1 (the soft targets of QFL and VFL); a loss
    must set `soft_targets` to accept them. "auto" (the default) takes "iou" for such a loss and
    "onehot" for the others, so the loss decides, not a flag kept in step by hand.

    Both are divided by the number of positive anchors (at least 1). With
    `normalizer_momentum` > 0 that count is smoothed across iterations by an EMA started at
    `normalizer_init` (detectron2 uses 0.9 and 100): with one or two images per GPU the raw
    count is noisy. The EMA is a buffer, so it is saved in checkpoints.

    `reduce_num_pos`, if given, averages the positive count over processes (DDP: with the
    gradients averaged too, the loss is then normalised by the global count).

    The box representation is the model's: outputs with "box_deltas" are decoded by `box_coder`,
    outputs with "box_distribution" (a head with `reg_max`, GFL) by the integral of
    `detector.ops.distribution`. The latter also gives "loss_dfl", `dfl_weight` × the Distribution
    Focal Loss of the positives' sides, and needs a box loss on decoded boxes (GIoU in GFL). GFL's
    recipe (mmdetection: QFL, GIoU weight 2, DFL weight 0.25) also weights each positive's GIoU and
    DFL by its highest predicted score and divides by their sum; here every positive counts 1 and
    both are divided by the positive count, as for every other box loss.
    """

    def __init__(
        self,
        cls_loss: nn.Module,
        box_loss: nn.Module,
        matcher: IoUMatcher | ATSSMatcher,
        box_coder: BoxCoder,
        cls_weight: float = 1.0,
        box_weight: float = 1.0,
        normalizer_momentum: float = 0.0,
        normalizer_init: float = 100.0,
        cls_target: str = "auto",
        reduce_num_pos: Callable[[Tensor], Tensor] | None = None,
        dfl_weight: float = 0.25,
    ):
        super().__init__()
        if cls_target not in ("auto", "onehot", "iou"):
            raise ValueError(f"criterion cls_target must be 'auto', 'onehot' or 'iou', got {cls_target!r}")
        if cls_target == "auto":
            cls_target = "iou" if getattr(cls_loss, "soft_targets", False) else "onehot"
        if cls_target == "iou" and not getattr(cls_loss, "soft_targets", False):
            raise ValueError(
                f"criterion.cls_target=iou gives each positive its IoU as a soft target, but "
                f"{type(cls_loss).__name__}'s formula assumes targets in {{0, 1}}; use a loss that takes "
                "soft targets (loss=qfl, loss=vfl) or criterion.cls_target=onehot"
            )
        input_space = getattr(box_loss, "input_space", None)
        if input_space not in ("deltas", "xyxy"):
            raise ValueError(
                f"{type(box_loss).__name__} must declare input_space 'deltas' or 'xyxy', got {input_space!r}"
            )
        if not 0.0 <= normalizer_momentum < 1.0:
            raise ValueError(f"criterion normalizer_momentum must be in [0, 1), got {normalizer_momentum}")
        if min(cls_weight, box_weight, dfl_weight) < 0:
            raise ValueError(
                f"criterion loss weights must be >= 0, got cls_weight={cls_weight}, box_weight={box_weight}, "
                f"dfl_weight={dfl_weight}"
            )
        self.cls_loss = cls_loss
        self.box_loss = box_loss
        self.matcher = matcher
        self.box_coder = box_coder
        self.cls_weight = cls_weight
        self.box_weight = box_weight
        self.dfl_weight = dfl_weight
        self.dfl = DistributionFocalLoss()
        self.normalizer_momentum = normalizer_momentum
        self.cls_target = cls_target
        self.register_buffer("normalizer_ema", torch.tensor(float(normalizer_init)))
        self.reduce_num_pos = reduce_num_pos

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        cls_logits = outputs["cls_logits"]  # (B, A, K); the rows the losses see are cast to float32
        distribution = outputs.get("box_distribution")  # (B, A, 4, n + 1), or the model gives "box_deltas"
        anchors = outputs["anchors"]  # (A, 4)
        if distribution is not None and self.box_loss.input_space == "deltas":
            raise ValueError(
                f"{type(self.box_loss).__name__} regresses box deltas, but the model's head predicts GFL's "
                "distribution (model.head.reg_max is set); use a box loss on decoded boxes (box_loss=giou, "
                "as GFL does, or another IoU loss) or model.head.reg_max=null"
            )
        num_anchors = anchors.shape[0]
        gt_boxes, gt_labels, gt_valid, gt_crowd = pad_targets(targets, anchors.device)
        levels_kw = (
            {"num_anchors_per_level": list(outputs["num_anchors_per_level"])}
            if getattr(self.matcher, "needs_levels", False)
            else {}
        )  # ATSS picks its candidates per level
        matches = self.matcher(anchors, gt_boxes, gt_valid, gt_crowd, **levels_kw)  # (B, A)
        positive = matches >= 0
        kept = matches != IGNORE
        per_level = getattr(self.cls_loss, "per_level", False) or getattr(self.box_loss, "per_level", False)
        levels = list(outputs["num_anchors_per_level"]) if per_level else []
        counts = torch.stack([kept.sum(), positive.sum(), *level_counts(kept, levels), *level_counts(positive, levels)])
        num_pos = counts[1].float()
        normalizer = self._normalizer(num_pos)

        num_kept, num_positive, *rows_per_level = row_counts(counts)  # the criterion's one host synchronisation
        kept_rows = torch.nonzero_static(kept.flatten(), size=num_kept).squeeze(1)  # indices into B·A rows
        positive_rows = torch.nonzero_static(positive.flatten(), size=num_positive).squeeze(1)
        labels = torch.where(positive, gt_labels.gather(1, matches.clamp(min=0)), -1).flatten()  # (B·A,), −1: negative
        context = {}
        if getattr(self.cls_loss, "needs_anchors", False):  # e.g. OHEM: per-image selection, NMS on loss
            context = {"image_index": kept_rows // num_anchors, "anchors": anchors[kept_rows % num_anchors]}
        matched_boxes = gt_boxes[positive_rows // num_anchors, matches.flatten()[positive_rows]]  # (P, 4)
        pos_anchors = anchors[positive_rows % num_anchors]  # (P, 4)
        pred_boxes = (  # (P, 4) xyxy, decoded from the model's representation
            predicted_boxes(outputs, positive_rows, self.box_coder)
            if self.cls_target == "iou" or self.box_loss.input_space == "xyxy"
            else None
        )

        kept_logits = cls_logits.flatten(0, 1)[kept_rows].float()  # losses always in float32
        kept_labels = labels[kept_rows]
        target_value = (kept_labels >= 0).to(kept_logits.dtype)  # 1 on each positive's class
        if self.cls_target == "iou":  # instead, the IoU of the positive's predicted box with its ground truth
            quality = kept_logits.new_zeros(labels.shape)
            quality[positive_rows] = box_geometry(pred_boxes.detach(), matched_boxes).iou.clamp(0.0, 1.0)
            target_value = quality[kept_rows]
        kept_targets = torch.zeros_like(kept_logits).scatter_(  # one-hot (or IoU-valued) rows, written in place
            1, kept_labels.clamp(min=0).unsqueeze(1), target_value.unsqueeze(1)
        )
        cls_split = (kept_rows % num_anchors, levels, rows_per_level[: len(levels)])
        loss_cls = self._call(self.cls_loss, cls_split, kept_logits, kept_targets, normalizer, **context)

        box_split = (positive_rows % num_anchors, levels, rows_per_level[len(levels) :])
        if self.box_loss.input_space == "deltas":
            pos_deltas = outputs["box_deltas"].flatten(0, 1)[positive_rows].float()  # (P, 4)
            box_inputs = (pos_deltas, self.box_coder.encode(pos_anchors, matched_boxes))
        else:
            box_inputs = (pred_boxes, matched_boxes)
        box_context = {}
        if getattr(self.box_loss, "needs_image_size", False):  # e.g. MPDIoU: corner distances over the image's diagonal
            box_context = {"image_size": image_sizes(targets, anchors.device)[positive_rows // num_anchors]}
        loss_box = self._call(self.box_loss, box_split, *box_inputs, normalizer, **box_context)
        losses = {"loss_cls": self.cls_weight * loss_cls, "loss_box": self.box_weight * loss_box}
        if distribution is not None:
            pos_strides = outputs["anchor_strides"][positive_rows % num_anchors]
            side_targets = boxes_to_distances(pos_anchors, matched_boxes, pos_strides, distribution.shape[-1] - 1)
            side_logits = distribution.flatten(0, 1)[positive_rows].float()  # (P, 4, n + 1)
            losses["loss_dfl"] = self.dfl_weight * self.dfl(side_logits, side_targets, normalizer)
        num_neg = (counts[0] * cls_logits.shape[-1] - counts[1]).float()  # on the device: no second wait
        return {**losses, "num_pos": num_pos, "num_neg": num_neg}

    @staticmethod
    def _call(
        loss: nn.Module,
        split: tuple[Tensor, list[int], list[int]],
        inputs: Tensor,
        targets: Tensor,
        normalizer: Tensor,
        **context: Tensor,
    ) -> Tensor:
        """loss(inputs, targets, normalizer, **context), or, for a `per_level` loss, the sum of one
        call per level on that level's rows (in level order, as the official code's levels run)."""
        if not getattr(loss, "per_level", False):
            return loss(inputs, targets, normalizer, **context)
        anchor_index, anchors_per_level, rows_per_level = split
        level = torch.zeros_like(anchor_index)
        end = 0
        for count in anchors_per_level[:-1]:  # host integers: no copy to the device, no wait
            end += count
            level += anchor_index >= end
        by_level = torch.sort(level, stable=True).indices
        total = inputs.new_zeros(())
        for rows in by_level.split(rows_per_level):
            total = total + loss(inputs[rows], targets[rows], normalizer, **{k: v[rows] for k, v in context.items()})
        return total

    def _normalizer(self, num_pos: Tensor) -> Tensor:
        total = self.reduce_num_pos(num_pos) if self.reduce_num_pos is not None else num_pos
        if self.normalizer_momentum == 0.0:
            return total.clamp(min=1.0)
        smoothed = self.normalizer_momentum * self.normalizer_ema + (1 - self.normalizer_momentum) * total.clamp(
            min=1.0
        )
        if self.training:
            self.normalizer_ema.copy_(smoothed.detach())
        return smoothed


def row_counts(counts: Tensor) -> list[int]:
    """The numbers of kept and positive anchors (then, for per-level losses, of each level's kept and
    positive anchors), fetched to the host together: the compact rows the losses take have these
    sizes. Every selection uses them (`nonzero_static`), so the criterion waits for the device once
    per step, not once per boolean mask."""
    return counts.tolist()


def level_counts(mask: Tensor, anchors_per_level: list[int]) -> list[Tensor]:
    """The true entries of a (B, A) mask on each level's slice of anchors (none without levels)."""
    return [part.sum() for part in mask.split(anchors_per_level, dim=1)] if anchors_per_level else []


def pad_targets(targets: list[dict], device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Stack per-image targets into [B, G, 4] boxes, [B, G] labels, valid and crowd masks (G = max count).

    The targets are on the host, as the loader gives them: the stacks are built there and copied
    without blocking (from pinned memory on CUDA, so that the copy cannot wait for the queued
    forward pass). Crowd is None when no image has a crowd box, decided on the host, so the
    matcher skips its crowd pass without asking the device."""
    counts = [len(t["boxes"]) for t in targets]
    num_gt = max(max(counts), 1)  # one invalid slot when no image has a box keeps gathers well-formed
    valid = torch.arange(num_gt) < torch.tensor(counts).unsqueeze(1)  # (B, G)
    boxes = _pad([t["boxes"].reshape(-1, 4).float() for t in targets], num_gt)
    labels = _pad([t["labels"].long() for t in targets], num_gt)
    crowd = _pad([t.get("iscrowd", torch.zeros(n)).bool() for t, n in zip(targets, counts)], num_gt)
    crowd = crowd if crowd.any() else None  # a host tensor: no device round trip
    return tuple(None if x is None else _to_device(x, torch.device(device)) for x in (boxes, labels, valid, crowd))


def image_sizes(targets: list[dict], device: torch.device) -> Tensor:
    """[B, 2] (h, w) of each input image, from the targets' "size" (the loader sets it)."""
    if any("size" not in t for t in targets):
        raise KeyError(
            "a box loss that needs the image size (MPDIoU) needs each target's 'size' (h, w), which "
            "detector.data.coco.CocoDetection sets; add it to hand-made targets"
        )
    return _to_device(torch.tensor([tuple(t["size"]) for t in targets], dtype=torch.float32), torch.device(device))


def _to_device(host: Tensor, device: torch.device) -> Tensor:
    return (host.pin_memory() if device.type == "cuda" else host).to(device, non_blocking=True)


def _pad(rows: list[Tensor], length: int) -> Tensor:
    padded = pad_sequence(rows, batch_first=True)  # (B, max count, ...)
    extra = length - padded.shape[1]
    return torch.cat([padded, padded.new_zeros(padded.shape[0], extra, *padded.shape[2:])], dim=1) if extra else padded
