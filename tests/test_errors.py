"""The TIDE error breakdown on constructed detections, against pycocotools' AP50 of the corrected sets."""

import contextlib
import copy
import io

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.engine import errors
from detector.engine.errors import KINDS, TRUE, error_breakdown

BOX = [0.0, 0.0, 100.0, 100.0]  # xywh
SHIFTED = [60.0, 0.0, 100.0, 100.0]  # IoU 40·100 / 160·100 = 0.25 with BOX: between t_b and t_f


def dataset(boxes):
    """COCO ground truth from [(image_id, category_id, xywh, iscrowd)]."""
    images = sorted({image for image, *_ in boxes} | set(range(1, 10)))
    return {
        "images": [{"id": i, "width": 640, "height": 480} for i in images],
        "annotations": [
            {"id": n, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": crowd}
            for n, (i, c, b, crowd) in enumerate(boxes, start=1)
        ],
        "categories": [{"id": c, "name": str(c)} for c in (1, 2, 3)],
    }


def detection(image, category, box, score):
    return {"image_id": image, "category_id": category, "bbox": list(box), "score": score}


def coco_ap50(truth, results):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(truth)
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats[1] * 100


# one error of each kind, each scored above a true positive of its class so that it costs AP50
TRUTH = dataset(
    [
        (1, 1, BOX, 0),  # found
        (2, 1, BOX, 0),  # found only with the wrong class: Cls
        (3, 1, BOX, 0),  # found only with a poor box: Loc
        (4, 1, BOX, 0),  # found twice: Dupe
        (5, 1, BOX, 0),  # found, and a detection on the background beside it: Bkg
        (6, 1, BOX, 0),  # found
        (7, 1, BOX, 0),  # not found: Miss
        (8, 1, BOX, 0),  # found, and a class-3 detection with a poor box on it: Both
        (9, 3, BOX, 0),  # found
    ]
)
DETECTIONS = [
    detection(4, 1, BOX, 0.99),
    detection(8, 3, SHIFTED, 0.96),  # Both
    detection(2, 2, BOX, 0.95),  # Cls
    detection(1, 1, BOX, 0.90),
    detection(3, 1, SHIFTED, 0.85),  # Loc
    detection(4, 1, BOX, 0.75),  # Dupe
    detection(5, 1, [400.0, 300.0, 50.0, 50.0], 0.70),  # Bkg
    detection(5, 1, BOX, 0.55),
    detection(6, 1, BOX, 0.50),
    detection(8, 1, BOX, 0.45),
    detection(9, 3, BOX, 0.40),
]
FIXES = {  # each kind corrected by hand: (the detections, the ground truth)
    "Cls": ([dict(d, category_id=1) if d["score"] == 0.95 else d for d in DETECTIONS], TRUTH),
    "Loc": ([dict(d, bbox=BOX) if d["score"] == 0.85 else d for d in DETECTIONS], TRUTH),
    "Both": ([d for d in DETECTIONS if d["score"] != 0.96], TRUTH),
    "Dupe": ([d for d in DETECTIONS if d["score"] != 0.75], TRUTH),
    "Bkg": ([d for d in DETECTIONS if d["score"] != 0.70], TRUTH),
    "Miss": (DETECTIONS, {**TRUTH, "annotations": [a for a in TRUTH["annotations"] if a["image_id"] != 7]}),
}


def test_one_error_of_each_kind_lands_in_its_bin_and_fixing_it_gains_what_pycocotools_measures():
    breakdown = error_breakdown(TRUTH, DETECTIONS)
    base = coco_ap50(TRUTH, DETECTIONS)
    assert breakdown["AP50"] == pytest.approx(base, abs=1e-9)
    assert breakdown["count"] == {kind: 1 for kind in KINDS}
    for kind, (fixed_detections, fixed_truth) in FIXES.items():
        gain = coco_ap50(fixed_truth, fixed_detections) - base
        assert gain > 1.0, kind  # every constructed error costs AP
        assert breakdown["dAP"][kind] == pytest.approx(gain, abs=1e-9), kind


def test_only_the_best_scored_claim_on_a_box_becomes_its_hit_and_a_box_already_found_takes_none():
    """Box 1 has two claims, a Loc error (0.9) and a weaker Cls error (0.8, class 3); box 2 is found (0.7)
    and has a Loc (0.95) and a Cls claim (0.65, class 3). Class 3 has a box of its own, found at 0.5, so
    a class-3 false positive left in place costs AP: fixing Cls must remove both Cls claims."""
    truth = dataset([(1, 1, BOX, 0), (2, 1, BOX, 0), (3, 1, BOX, 0), (4, 3, BOX, 0)])
    detections = [
        detection(1, 1, SHIFTED, 0.9),
        detection(1, 3, BOX, 0.8),
        detection(2, 1, BOX, 0.7),
        detection(2, 1, [0.0, 0.0, 100.0, 30.0], 0.95),  # IoU 0.3 with box 2
        detection(2, 3, BOX, 0.65),
        detection(3, 1, BOX, 0.6),
        detection(4, 3, BOX, 0.5),
    ]
    breakdown = error_breakdown(truth, detections)
    assert breakdown["count"] == {"Cls": 2, "Loc": 2, "Both": 0, "Dupe": 0, "Bkg": 0, "Miss": 0}
    base = coco_ap50(truth, detections)
    loc_fixed = [dict(d, bbox=BOX) if d["score"] == 0.9 else d for d in detections if d["score"] != 0.95]
    assert breakdown["dAP"]["Loc"] == pytest.approx(coco_ap50(truth, loc_fixed) - base, abs=1e-9)
    cls_fixed = [d for d in detections if d["score"] not in (0.8, 0.65)]  # neither claim may hit
    gain = coco_ap50(truth, cls_fixed) - base
    assert gain > 10.0 and breakdown["dAP"]["Cls"] == pytest.approx(gain, abs=1e-9)


def test_crowd_regions_images_without_boxes_and_no_detections():
    truth = dataset([(1, 1, BOX, 0), (1, 1, [200.0, 200.0, 100.0, 100.0], 1)])
    detections = [
        detection(1, 1, [210.0, 210.0, 50.0, 50.0], 0.9),  # inside the crowd region: ignored
        detection(1, 1, [150.0, 200.0, 100.0, 100.0], 0.85),  # half inside (crowd IoU 0.5): ignored, as COCOeval
        detection(2, 1, BOX, 0.8),  # an image without boxes: background
        detection(1, 1, BOX, 0.7),
    ]
    breakdown = error_breakdown(truth, detections)
    assert breakdown["count"] == {"Cls": 0, "Loc": 0, "Both": 0, "Dupe": 0, "Bkg": 1, "Miss": 0}
    assert breakdown["AP50"] == pytest.approx(coco_ap50(truth, detections), abs=1e-9)
    assert breakdown["dAP"]["Bkg"] == pytest.approx(100.0 - breakdown["AP50"], abs=1e-9)

    nothing = error_breakdown(truth, [])
    assert nothing["AP50"] == 0.0 and nothing["count"]["Miss"] == 1 and nothing["dAP"]["Miss"] == 0.0
    assert error_breakdown(truth, detections, image_ids=[2])["count"]["Bkg"] == 1  # the images evaluated only


def test_only_the_best_max_dets_of_an_image_count():
    truth = dataset([(1, 1, BOX, 0)])
    detections = [detection(1, 1, [300.0 + i, 300.0, 20.0, 20.0], 0.9 - i / 100) for i in range(3)]
    detections.append(detection(1, 1, BOX, 0.5))  # fourth: past max_dets=3, not counted
    breakdown = error_breakdown(truth, detections, max_dets=3)
    assert breakdown["count"]["Bkg"] == 3 and breakdown["count"]["Miss"] == 1 and breakdown["AP50"] == 0.0


def classify_per_image(dets, det_image, det_class, det_box, boxes, gt_image, gt_class, gt_box, taken, fg, bg):
    """`errors._classify` one image at a time with pycocotools' IoU: the greedy match as a loop over the
    detections, then each false positive's kind from its IoU rows."""
    codes, targets = np.full(len(dets), KINDS.index("Bkg")), np.full(len(dets), -1)
    for image in np.unique(det_image[dets]):
        mine = np.flatnonzero(det_image[dets] == image)  # positions in `dets`, the best first
        theirs = boxes[gt_image[boxes] == image]
        if len(theirs) == 0:
            continue
        iou = np.asarray(mask_utils.iou(det_box[dets[mine]], gt_box[theirs], [0] * len(theirs)))
        same = det_class[dets[mine]][:, None] == gt_class[theirs][None, :]
        same_iou, other_iou = np.where(same, iou, 0.0), np.where(same, 0.0, iou)
        free = np.ones(len(theirs), dtype=bool)
        for row, position in enumerate(mine):
            best, best_iou = -1, fg
            for column in range(len(theirs)):
                if same[row, column] and free[column] and iou[row, column] >= best_iou:
                    best, best_iou = column, iou[row, column]
            if best >= 0:
                free[best], codes[position] = False, TRUE
        taken[theirs[~free]] = True
        for row, position in enumerate(mine):
            if codes[position] == TRUE:
                continue
            top_same, top_other = same_iou[row].max(), other_iou[row].max()
            if bg <= top_same < fg:
                codes[position], targets[position] = KINDS.index("Loc"), theirs[same_iou[row].argmax()]
            elif top_other >= fg:
                codes[position], targets[position] = KINDS.index("Cls"), theirs[other_iou[row].argmax()]
            elif np.where(free, 0.0, same_iou[row]).max() >= fg:
                codes[position] = KINDS.index("Dupe")
            elif iou[row].max() <= bg:
                codes[position] = KINDS.index("Bkg")
            else:
                codes[position] = KINDS.index("Both")
    return codes, targets


def score(rng):
    return float(rng.integers(1, 20)) / 20  # coarse: equal scores too


def test_the_breakdown_over_all_images_at_once_equals_a_loop_over_the_images(monkeypatch):
    """Boxes on a coarse grid (equal IoUs, so ties must break as COCOeval's do), crowd regions, and images
    with more detections than max_dets."""
    rng = np.random.default_rng(0)
    boxes = []
    for image in range(1, 41):
        for _ in range(rng.integers(0, 6)):
            corner, size = rng.integers(0, 8, 2) * 10.0, rng.integers(1, 5, 2) * 20.0
            boxes.append((image, int(rng.integers(1, 4)), [*corner, *size], int(rng.random() < 0.1)))
    boxes += [(41, 1, BOX, 0), (41, 1, BOX, 0)]  # two equal boxes: a hit takes the last, a Loc claim the first
    truth = dataset(boxes)
    detections = [detection(41, 1, BOX, 0.9), detection(41, 1, SHIFTED, 0.8)]
    for image, category, box, _ in boxes[:-2]:  # copies on the grid: hits, duplicates, wrong classes, poor boxes
        for _ in range(rng.integers(0, 4)):
            shifted = [v + 10.0 * int(rng.integers(-1, 2)) for v in box[:2]] + box[2:]
            label = category if rng.random() < 0.7 else int(rng.integers(1, 4))
            detections.append(detection(image, label, shifted, score(rng)))
    for image in range(1, 41):  # and on the background
        for _ in range(rng.integers(0, 4)):
            corner, size = rng.integers(0, 8, 2) * 10.0, rng.integers(1, 5, 2) * 20.0
            detections.append(
                detection(image, int(rng.integers(1, 4)), [*corner, *size], float(rng.integers(1, 20)) / 20)
            )
    vectorised = error_breakdown(truth, detections, max_dets=10)
    monkeypatch.setattr(errors, "BLOCK", 7)  # blocks of a few images
    assert error_breakdown(truth, detections, max_dets=10) == vectorised
    monkeypatch.setattr(errors, "_classify", classify_per_image)
    assert vectorised == error_breakdown(truth, detections, max_dets=10)
    assert min(vectorised["count"][kind] for kind in ("Cls", "Loc", "Both", "Dupe", "Bkg")) > 0, vectorised


def test_the_pair_iou_is_pycocotools():
    rng = np.random.default_rng(1)
    det, gt = rng.random((50, 4)) * 50, rng.random((50, 4)) * 50
    for crowd in (False, True):
        expected = np.diag(np.asarray(mask_utils.iou(det, gt, [int(crowd)] * len(gt))))
        np.testing.assert_array_equal(errors._iou(det, gt, crowd=crowd), expected)


def test_a_result_whose_bbox_is_not_four_values_is_refused_with_its_index():
    broken = [*DETECTIONS[:2], {**DETECTIONS[2], "bbox": [0.0, 0.0, 100.0]}]
    with pytest.raises(ValueError, match=r"result 2 \(image_id 2\) has a bbox of 3 values; COCO results give"):
        error_breakdown(TRUTH, broken)
