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

from itertools import chain
from operator import itemgetter

import numpy as np

KINDS = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")
TRUE, IGNORED = -1, -2  # detection codes beside the indices of KINDS
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
BLOCK = 8192  # detections classified together: their (detection, box) pairs stay a few MB


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
    det_image, det_class, det_score, det_box = _detection_arrays(results)
    shown = np.isin(det_image, np.fromiter(keep, np.int64, len(keep)))
    best_first = np.flatnonzero(shown)[np.lexsort((det_image[shown], -det_score[shown]))]  # ties: COCOeval's
    det_image, det_class, det_box = det_image[best_first], det_class[best_first], det_box[best_first]

    by_image = np.argsort(det_image, kind="stable")  # per image, the best first
    rank = np.empty(len(det_image), dtype=np.int64)
    rank[by_image] = np.arange(len(det_image)) - np.searchsorted(det_image[by_image], det_image[by_image])
    counted_det = np.flatnonzero(rank < max_dets)  # the rest stay uncounted
    code = np.full(len(det_image), IGNORED, dtype=np.int64)
    target = np.full(len(det_image), -1, dtype=np.int64)
    taken = np.zeros(len(truth), dtype=bool)
    counted_truth = ~gt_crowd
    counted_det = counted_det[np.argsort(det_image[counted_det], kind="stable")]  # by image, each the best first
    boxes = np.flatnonzero(counted_truth)
    for dets in _image_blocks(counted_det, det_image[counted_det], BLOCK):  # small arrays: no page fault per pass
        code[dets], target[dets] = _classify(
            dets, det_image, det_class, det_box, boxes, gt_image, gt_class, gt_box, taken, foreground, background
        )
    errors = counted_det[code[counted_det] >= 0]
    crowd_det, crowd_gt = _pairs(errors, det_image, np.flatnonzero(gt_crowd), gt_image)
    crowd_det = errors[crowd_det]
    inside = _iou(det_box[crowd_det], gt_box[crowd_gt], crowd=True) >= foreground
    code[crowd_det[inside & (det_class[crowd_det] == gt_class[crowd_gt])]] = IGNORED

    claims = np.isin(code, [KINDS.index("Cls"), KINDS.index("Loc")]) & (target >= 0)
    claims[claims] = ~taken[target[claims]]  # a box a hit took cannot be claimed
    claimed = np.zeros(len(truth), dtype=bool)
    claimed[target[claims]] = True
    rivals = np.flatnonzero(claims)
    rivals = rivals[np.argsort(target[rivals], kind="stable")]  # per box, its best-scored claim first
    best_claim = np.zeros(len(det_image), dtype=bool)
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


def _detection_arrays(results: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The results' image ids, category ids, scores and [N, 4] xywh boxes, read in one pass each."""
    count = len(results)
    lengths = np.fromiter(map(len, map(itemgetter("bbox"), results)), np.int64, count)
    if (lengths != 4).any():
        index = int(np.flatnonzero(lengths != 4)[0])
        raise ValueError(f"result {index} (image_id {results[index]['image_id']}) has a bbox of {lengths[index]} "
                         "values; COCO results give [x, y, width, height]")  # fmt: skip
    image = np.fromiter(map(itemgetter("image_id"), results), np.int64, count)
    category = np.fromiter(map(itemgetter("category_id"), results), np.int64, count)
    score = np.fromiter(map(itemgetter("score"), results), np.float64, count)
    box = np.fromiter(chain.from_iterable(map(itemgetter("bbox"), results)), np.float64, 4 * count)
    return image, category, score, box.reshape(count, 4)


def _image_blocks(dets: np.ndarray, images: np.ndarray, size: int) -> list[np.ndarray]:
    """`dets` (grouped by image) cut into consecutive blocks of about `size`, at image boundaries."""
    if len(dets) == 0:
        return []
    bounds = np.r_[np.flatnonzero(np.r_[True, images[1:] != images[:-1]]), len(dets)]  # where images start
    cuts = np.unique(bounds[np.searchsorted(bounds, np.arange(size, len(dets), size))])  # the next start
    return np.split(dets, cuts[cuts < len(dets)])


def _pairs(dets: np.ndarray, det_image: np.ndarray, boxes: np.ndarray, gt_image: np.ndarray):
    """Every (detection, box) pair of the same image, as two index arrays: for each of `dets` in its order
    (given by its position in `dets`), the `boxes` of its image in their order."""
    order = boxes[np.argsort(gt_image[boxes], kind="stable")]
    first = np.searchsorted(gt_image[order], det_image[dets], side="left")
    per_det = np.searchsorted(gt_image[order], det_image[dets], side="right") - first
    pair_det = np.repeat(np.arange(len(dets)), per_det)
    offset = np.arange(len(pair_det)) - np.repeat(np.cumsum(per_det) - per_det, per_det)
    return pair_det, order[np.repeat(first, per_det) + offset]


def _iou(det: np.ndarray, gt: np.ndarray, crowd: bool = False) -> np.ndarray:
    """Row-by-row IoU of xywh boxes, as pycocotools' `bbIou` computes it (over the detection's own area
    for a crowd region)."""
    w = np.minimum(det[:, 0] + det[:, 2], gt[:, 0] + gt[:, 2]) - np.maximum(det[:, 0], gt[:, 0])
    h = np.minimum(det[:, 1] + det[:, 3], gt[:, 1] + gt[:, 3]) - np.maximum(det[:, 1], gt[:, 1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    det_area = det[:, 2] * det[:, 3]
    union = det_area if crowd else det_area + gt[:, 2] * gt[:, 3] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / union, 0.0)


def _classify(
    dets: np.ndarray,
    det_image: np.ndarray,
    det_class: np.ndarray,
    det_box: np.ndarray,
    boxes: np.ndarray,
    gt_image: np.ndarray,
    gt_class: np.ndarray,
    gt_box: np.ndarray,
    taken: np.ndarray,
    foreground: float,
    background: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(codes, targets) of `dets` (best-scored first) against the counted `boxes` of their images: TRUE
    or the index of its kind in KINDS, and for Cls and Loc the index of the box it points at; marks
    `taken`. All images at once, over the (detection, box) pairs of each image."""
    pair_det, pair_gt = _pairs(dets, det_image, boxes, gt_image)  # pair_det: positions in `dets`
    iou = _iou(det_box[dets[pair_det]], gt_box[pair_gt])
    overlapping = iou > 0  # a detection without them keeps the defaults: IoU 0 with every box, Bkg
    pair_det, pair_gt, iou = pair_det[overlapping], pair_gt[overlapping], iou[overlapping]
    same = det_class[dets[pair_det]] == gt_class[pair_gt]
    hit = np.zeros(len(dets), dtype=bool)
    _match(pair_det, pair_gt, np.flatnonzero(same & (iou >= foreground)), iou, hit, taken)

    segments = np.flatnonzero(np.r_[True, pair_det[1:] != pair_det[:-1]]) if len(pair_det) else pair_det
    owners = pair_det[segments]  # the detections that overlap a box
    same_iou, other_iou = np.where(same, iou, 0.0), np.where(same, 0.0, iou)
    best_same, best_same_box = _segment_max(same_iou, pair_gt, segments)
    best_other, best_other_box = _segment_max(other_iou, pair_gt, segments)
    used_same = _segment_max(np.where(taken[pair_gt], same_iou, 0.0), pair_gt, segments)[0]
    best_any = np.maximum(best_same, best_other)

    codes = np.full(len(dets), KINDS.index("Bkg"), dtype=np.int64)  # a detection that overlaps no box
    targets = np.full(len(dets), -1, dtype=np.int64)
    loc = (best_same >= background) & (best_same < foreground)
    cls = ~loc & (best_other >= foreground)
    dupe = ~loc & ~cls & (used_same >= foreground)
    bkg = ~loc & ~cls & ~dupe & (best_any <= background)
    kinds = np.full(len(owners), KINDS.index("Both"), dtype=np.int64)
    for kind, chosen in (("Bkg", bkg), ("Dupe", dupe), ("Cls", cls), ("Loc", loc)):
        kinds[chosen] = KINDS.index(kind)
    codes[owners] = kinds
    targets[owners] = np.where(loc, best_same_box, np.where(cls, best_other_box, -1))
    codes[hit] = TRUE
    targets[hit] = -1
    return codes, targets


def _match(pair_det, pair_gt, candidates, iou, hit, taken) -> None:
    """COCOeval's greedy matching on the (detection, box) pairs of the same class with IoU ≥ t_f, in the
    detections' order: each takes its free box of the highest IoU (of equal ones, the last)."""
    dets, gts, ious = pair_det[candidates].tolist(), pair_gt[candidates].tolist(), iou[candidates].tolist()
    free = dict.fromkeys(gts, True)
    i = 0
    while i < len(dets):
        det, best, best_iou = dets[i], -1, -1.0
        while i < len(dets) and dets[i] == det:
            if free[gts[i]] and ious[i] >= best_iou:
                best, best_iou = gts[i], ious[i]
            i += 1
        if best >= 0:
            free[best], hit[det], taken[best] = False, True, True


def _segment_max(values: np.ndarray, labels: np.ndarray, segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per segment of consecutive pairs (starting at `segments`): the max of `values` and the label of
    its first occurrence."""
    if len(segments) == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    peak = np.maximum.reduceat(values, segments)
    owner = np.repeat(np.arange(len(segments)), np.diff(np.r_[segments, len(values)]))
    position = np.where(values == peak[owner], np.arange(len(values)), len(values))
    return peak, labels[np.minimum.reduceat(position, segments)]


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
