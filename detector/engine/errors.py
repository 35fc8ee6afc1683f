"""The TIDE error breakdown (Bolya et al., "TIDE: A General Toolbox for Identifying Object Detection
Errors", ECCV 2020): the AP50 that each kind of error costs.

Per image, the `max_dets` (100) best-scored detections over all classes (the official code's cut;
COCOeval's is per class, the same for detectors that keep at most 100 an image) are matched to the
ground truth greedily by score, each taking the unmatched box of its class with the highest IoU ≥
t_f (0.5), as COCOeval matches; one that overlaps a crowd region of its class by t_f (intersection
over its own area) is ignored, and not classified either (the official code still classifies it).
Each false positive then gets one kind, in the order of the official code (t_b = 0.1):
- **Loc**: its best IoU with a box of its class lies in [t_b, t_f): a better box would have hit;
- **Cls**: IoU ≥ t_f with a box of another class: the right class would have hit;
- **Dupe**: IoU ≥ t_f with a box of its class that a better-scored detection already took;
- **Bkg**: IoU ≤ t_b with every box;
- **Both**: the rest (the wrong class and a poor box).
A box that no detection took and that no Cls or Loc error points at is **Miss**.

Fixing one kind, the rest unchanged: a Cls or Loc error becomes a true positive of its box's
class, with its score, if its box is unmatched and it is that box's best-scored Cls or Loc error;
otherwise, and for Dupe, Bkg and Both, the detection is removed; a missed box leaves the ground
truth. A kind's dAP is the AP50 after fixing it minus the AP50, floored at 0 (the official code's
rule). AP50: per class, precision interpolated at COCO's 101 recall points, averaged over the
classes with ground truth (COCOeval's mean; the official code also averages in, at 0, classes that
have detections and no box).

tidecv, the official package, requires the full opencv-python, which clashes with the headless
OpenCV that albumentations installs; hence this implementation.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

KINDS = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")
TRUE, IGNORED = -1, -2  # detection codes beside the indices of KINDS
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def error_breakdown(
    dataset: dict,
    results: list[dict],
    image_ids: list[int] | None = None,
    foreground: float = 0.5,
    background: float = 0.1,
    max_dets: int = 100,
) -> dict:
    """{"AP50": the AP50 in percent, "dAP": {kind: AP50 gained by fixing it}, "count": {kind: errors}}
    for COCO-format ground truth (`dataset`: images, annotations) and results (image_id,
    category_id, bbox in xywh, score), over `image_ids` (default: every image of `dataset`)."""
    keep = {image["id"] for image in dataset["images"]} if image_ids is None else set(image_ids)
    truth = [a for a in dataset["annotations"] if a["image_id"] in keep]
    gt_image = np.array([a["image_id"] for a in truth], dtype=np.int64)
    gt_class = np.array([a["category_id"] for a in truth], dtype=np.int64)
    gt_box = np.array([a["bbox"] for a in truth], dtype=np.float64).reshape(-1, 4)
    gt_crowd = np.array([bool(a.get("iscrowd", 0)) for a in truth], dtype=bool)
    shown = [r for r in results if r["image_id"] in keep]
    best_first = np.lexsort(([r["image_id"] for r in shown], [-r["score"] for r in shown]))  # ties: COCOeval's
    shown = [shown[i] for i in best_first]
    det_image = np.array([r["image_id"] for r in shown], dtype=np.int64)
    det_class = np.array([r["category_id"] for r in shown], dtype=np.int64)
    det_box = np.array([r["bbox"] for r in shown], dtype=np.float64).reshape(-1, 4)

    code = np.full(len(shown), IGNORED, dtype=np.int64)  # detections past max_dets stay uncounted
    target = np.full(len(shown), -1, dtype=np.int64)  # the box a Cls or Loc error points at
    taken = np.zeros(len(truth), dtype=bool)
    det_groups = _groups(det_image, np.arange(len(shown)))  # per image, the best first
    gt_groups = _groups(gt_image, np.arange(len(truth)))
    empty = np.zeros(0, dtype=np.int64)
    for image_id, dets in det_groups.items():
        dets = dets[:max_dets]
        boxes = gt_groups.get(image_id, empty)
        counted = boxes[~gt_crowd[boxes]]
        crowds = boxes[gt_crowd[boxes]]
        code[dets], target[dets] = _classify(
            det_box[dets], det_class[dets], gt_box[counted], gt_class[counted], taken, counted, foreground, background
        )
        if len(crowds):
            free = code[dets] >= 0
            inside = mask_utils.iou(det_box[dets], gt_box[crowds], [1] * len(crowds)) >= foreground
            same = det_class[dets][:, None] == gt_class[crowds][None, :]
            code[dets[free & (inside & same).any(axis=1)]] = IGNORED

    counted_truth = ~gt_crowd
    claims = np.isin(code, [KINDS.index("Cls"), KINDS.index("Loc")]) & (target >= 0)
    claims[claims] = ~taken[target[claims]]  # a box a hit took cannot be claimed
    claimed = np.zeros(len(truth), dtype=bool)
    claimed[target[claims]] = True
    rivals = np.flatnonzero(claims)
    rivals = rivals[np.argsort(target[rivals], kind="stable")]  # per box, its best-scored claim first
    best_claim = np.zeros(len(shown), dtype=bool)
    best_claim[rivals[np.r_[True, target[rivals][1:] != target[rivals][:-1]]] if len(rivals) else rivals] = True
    missed = counted_truth & ~taken & ~claimed

    classes, class_counts = np.unique(gt_class[counted_truth], return_counts=True)
    num_gt = {c: int(n) for c, n in zip(classes, class_counts)}
    tp = code == TRUE
    scored = code != IGNORED
    base = _mean_ap(classes, det_class[scored], tp[scored], num_gt)
    gains, counts = {}, {}
    for index, kind in enumerate(KINDS):
        counts[kind] = int(missed.sum() if kind == "Miss" else (code == index).sum())
        if kind == "Miss":
            fixed_gt = dict(num_gt)
            for c in gt_class[missed]:
                fixed_gt[c] -= 1
            fixed = _mean_ap(classes, det_class[scored], tp[scored], fixed_gt)
        else:
            errors = code == index
            hits = errors & best_claim if kind in ("Cls", "Loc") else np.zeros_like(errors)
            kept = scored & (~errors | hits)
            labels = det_class.copy()
            labels[hits] = gt_class[target[hits]]
            fixed = _mean_ap(classes, labels[kept], (tp | hits)[kept], num_gt)
        gains[kind] = max(fixed - base, 0.0)
    return {"AP50": base, "dAP": gains, "count": counts}


def _classify(
    boxes: np.ndarray,
    labels: np.ndarray,
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    taken: np.ndarray,
    gt_index: np.ndarray,
    foreground: float,
    background: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(codes, targets) for one image's detections, best-scored first: TRUE or the index of its
    kind in KINDS, and for Cls and Loc the global index of the box it points at; marks `taken`."""
    codes = np.full(len(boxes), KINDS.index("Bkg"), dtype=np.int64)
    targets = np.full(len(boxes), -1, dtype=np.int64)
    if len(gt_boxes) == 0:
        return codes, targets
    iou = np.asarray(mask_utils.iou(boxes, gt_boxes, [0] * len(gt_boxes))).reshape(len(boxes), len(gt_boxes))
    same = labels[:, None] == gt_labels[None, :]
    same_iou = np.where(same, iou, 0.0)
    free = np.ones(len(gt_boxes), dtype=bool)
    hit = np.zeros(len(boxes), dtype=bool)
    start = 0
    while True:  # one round per hit: the next detection whose best free box overlaps by t_f takes it
        overlaps = np.where(free[None, :], same_iou[start:], 0.0)
        able = np.flatnonzero(overlaps.max(axis=1, initial=0.0) >= foreground)
        if len(able) == 0:
            break
        row = start + int(able[0])  # the detections before it hit nothing, and boxes only get taken
        best = overlaps[able[0]]
        hit[row], free[len(best) - 1 - int(np.argmax(best[::-1]))] = True, False  # equal IoUs: the last, as COCOeval
        start = row + 1
    taken[gt_index[~free]] = True

    other_iou = np.where(same, 0.0, iou)
    used_same = np.where(~free[None, :], same_iou, 0.0)
    best_same, best_other = same_iou.argmax(axis=1), other_iou.argmax(axis=1)
    rows = np.arange(len(boxes))
    loc = (same_iou[rows, best_same] >= background) & (same_iou[rows, best_same] < foreground)
    cls = ~loc & (other_iou[rows, best_other] >= foreground)
    dupe = ~loc & ~cls & (used_same.max(axis=1) >= foreground)
    bkg = ~loc & ~cls & ~dupe & (iou.max(axis=1) <= background)
    codes = np.full(len(boxes), KINDS.index("Both"), dtype=np.int64)
    for kind, chosen in (("Bkg", bkg), ("Dupe", dupe), ("Cls", cls), ("Loc", loc)):
        codes[chosen] = KINDS.index(kind)
    codes[hit] = TRUE
    targets = np.where(codes == KINDS.index("Loc"), gt_index[best_same], targets)
    targets = np.where(codes == KINDS.index("Cls"), gt_index[best_other], targets)
    return codes, targets


def _groups(keys: np.ndarray, values: np.ndarray) -> dict[int, np.ndarray]:
    """{key: the values at its positions} for `keys` sorted (or grouped) in place."""
    order = np.argsort(keys, kind="stable")
    unique, starts = np.unique(keys[order], return_index=True)
    return {int(k): values[order[s:e]] for k, s, e in zip(unique, starts, [*starts[1:], len(keys)])}


def _mean_ap(classes: np.ndarray, labels: np.ndarray, tp: np.ndarray, num_gt: dict) -> float:
    """The mean over `classes` with ground truth left of their AP at COCO's 101 recall points, in
    percent, for detections given the best first."""
    order = np.argsort(labels, kind="stable")  # by class, each the best first
    labels, tp = labels[order], tp[order]
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]]) if len(labels) else np.zeros(0, dtype=np.int64)
    spans = {int(labels[s]): (s, e) for s, e in zip(starts, [*starts[1:], len(labels)])}
    values = []
    for c in classes:
        if num_gt[c] <= 0:
            continue
        if c not in spans:
            values.append(0.0)
            continue
        hits = tp[slice(*spans[c])]
        true = np.cumsum(hits)
        precision = true / np.arange(1, len(hits) + 1)
        envelope = np.maximum.accumulate(precision[::-1])[::-1]  # COCOeval's monotone precision
        at = np.searchsorted(true / num_gt[c], RECALL_POINTS, side="left")
        values.append(np.where(at < len(hits), envelope[np.minimum(at, len(hits) - 1)], 0.0).mean())
    return float(np.mean(values) * 100) if values else 0.0


def format_errors(breakdown: dict) -> str:
    """One line: AP50, then each kind's dAP and (count)."""
    kinds = "  ".join(f"{k} {breakdown['dAP'][k]:.2f} ({breakdown['count'][k]})" for k in KINDS)
    return f"AP50 {breakdown['AP50']:.2f}; AP50 gained by fixing each kind of error (count): {kinds}"
