"""COCO box AP with pycocotools, on the original image coordinates and category ids."""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import io
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.data.coco import coco_results
from detector.data.images import read_rgb
from detector.engine.distributed import gather_to_main
from detector.engine.errors import error_breakdown
from detector.engine.pictures import draw_detections

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
RESULT_KEYS = ("image_id", "category_id", "bbox", "score")  # the COCO results format


BACKENDS = ("auto", "pycocotools", "faster_coco_eval")


def resolve_backend(backend: str) -> str:
    """`auto`: faster-coco-eval when it is installed (the same 12 stats, several times faster), else
    pycocotools, the reference."""
    if backend not in BACKENDS:
        raise ValueError(f"evaluation.backend must be one of {list(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        return "faster_coco_eval" if importlib.util.find_spec("faster_coco_eval") else "pycocotools"
    if backend == "faster_coco_eval" and not importlib.util.find_spec("faster_coco_eval"):
        raise ValueError(
            "evaluation.backend=faster_coco_eval but the faster-coco-eval package is not installed; "
            "pip install faster-coco-eval, or use evaluation.backend=pycocotools"
        )
    return backend


class CocoEvaluator:
    """Collects detections in COCO results format and scores them with `COCOeval`.

    `update` maps boxes from network-input pixels back to the file's pixels
    (x·orig_w/w, y·orig_h/h), turns xyxy into xywh and labels into category ids; each result also
    carries the area and iscrowd = 0 that `loadRes` would add (and, once scored by faster-coco-eval, an id).
    `summarize` returns the 12 COCO stats in percent; −1 where pycocotools has no ground truth
    for that size range. An empty detection list scores 0 (pycocotools' `loadRes` raises on it).
    `backend` is pycocotools or faster_coco_eval (the same protocol, reimplemented in C++).
    """

    def __init__(self, coco_gt: COCO, category_ids: list[int], backend: str = "auto"):
        self.coco_gt = coco_gt
        self.category_ids = category_ids
        self.backend = resolve_backend(backend)
        self.results: list[dict] = []
        self.image_ids: list[int] = []

    def update(self, targets: list[dict], detections: list[dict]) -> None:
        for target, det in zip(targets, detections):
            if target.get("replaces"):  # served in place of an unusable image; it is scored at its own turn
                continue
            self.image_ids.append(int(target["image_id"]))
            if len(det["boxes"]) == 0:
                continue
            (orig_h, orig_w), (h, w) = target["orig_size"], target["size"]
            self.results += coco_results(det, int(target["image_id"]), (orig_w / w, orig_h / h), self.category_ids)

    def summarize(self) -> tuple[dict[str, float], str]:
        """(stats in percent keyed by STAT_NAMES, pycocotools' printed table); `self.seconds` then
        holds the time spent loading the results and in evaluate + accumulate + summarize, and
        `self.per_class` the per-category AP (`per_class_ap`) of the same precision array, and
        `self.errors` the TIDE error breakdown (`detector.engine.errors`; `self.seconds["errors"]`)."""
        start = time.perf_counter()
        coco_class, eval_class = _backend_classes(self.backend)
        coco_gt = self.coco_gt if coco_class is COCO else _as(coco_class, self.coco_gt.dataset)
        coco_dt = self._load_results(coco_gt, coco_class)
        loaded = time.perf_counter()
        evaluator = eval_class(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = sorted(set(self.image_ids)) or evaluator.params.imgIds
        table = io.StringIO()
        with contextlib.redirect_stdout(table):
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        self.seconds = {"load": loaded - start, "evaluate": time.perf_counter() - loaded}
        stats = {name: _percent(v) for name, v in zip(STAT_NAMES, evaluator.stats)}
        names = {c["id"]: c["name"] for c in self.coco_gt.dataset["categories"]}
        counts = Counter(
            a["category_id"]
            for i in evaluator.params.imgIds
            for a in self.coco_gt.imgToAnns.get(i, [])
            if not a.get("iscrowd", 0)
        )
        precision, iou_thresholds = np.asarray(evaluator.eval["precision"]), np.asarray(evaluator.params.iouThrs)
        self.per_class = per_class_ap(precision, list(evaluator.params.catIds), iou_thresholds, names, counts)
        self.pr_curves = pr_curves(precision, iou_thresholds, np.asarray(evaluator.params.recThrs))
        broken_down = time.perf_counter()
        self.errors = error_breakdown(self.coco_gt.dataset, self.results, list(evaluator.params.imgIds))
        self.seconds["errors"] = time.perf_counter() - broken_down
        return stats, table.getvalue()

    def _load_results(self, coco_gt, coco_class):
        """pycocotools, the reference: its own `loadRes` (on copies: it adds keys to each result).
        faster-coco-eval: the results indexed as they are, with the ids `loadRes` would give them;
        `update` already set the rest that it sets for boxes (area = w·h, iscrowd = 0). Its
        `loadRes` loop over the results took longer than the evaluation."""
        if self.results and coco_class is COCO:
            with contextlib.redirect_stdout(io.StringIO()):
                return coco_gt.loadRes([dict(result) for result in self.results])
        unknown = {result["image_id"] for result in self.results} - coco_gt.imgs.keys()
        if unknown:  # loadRes's check
            raise ValueError(
                f"{len(unknown)} image ids of the detections are not in the ground truth, e.g. {sorted(unknown)[:5]}"
            )
        for index, result in enumerate(self.results, start=1):
            result["id"] = index
        return _as(
            coco_class,
            {
                "images": list(coco_gt.dataset["images"]),
                "annotations": self.results,
                "categories": copy.deepcopy(coco_gt.dataset["categories"]),
            },
        )


def per_class_ap(
    precision: np.ndarray,
    category_ids: list[int],
    iou_thresholds: np.ndarray,
    names: dict[int, str],
    gt_counts: dict[int, int],
) -> list[dict]:
    """Per category: AP (mean over the IoU thresholds .5:.95 and the 101 recall points), AP50, AP75,
    in percent (−1 without ground truth), and its number of non-crowd ground-truth boxes. `precision`
    is COCOeval's accumulated [T, R, K, A, M] array (T thresholds, R recall points, K categories in
    `category_ids` order, A areas with "all" first, M detection caps with 100 last), the same that
    gives the summary's AP."""
    at = {threshold: int(np.argmin(np.abs(iou_thresholds - threshold))) for threshold in (0.5, 0.75)}

    def mean(values: np.ndarray) -> float:
        values = values[values > -1]
        return round(float(values.mean()) * 100, 3) if values.size else -1.0

    rows = []
    for k, category in enumerate(category_ids):
        curve = precision[:, :, k, 0, -1]  # (T, R): all areas, 100 detections
        rows.append(
            {
                "class": names.get(category, str(category)),
                "category_id": int(category),
                "AP": mean(curve),
                "AP50": mean(curve[at[0.5]]),
                "AP75": mean(curve[at[0.75]]),
                "gt_boxes": int(gt_counts.get(category, 0)),
            }
        )
    return rows


def pr_curves(precision: np.ndarray, iou_thresholds: np.ndarray, recall_points: np.ndarray) -> dict:
    """Precision at COCO's 101 recall points, averaged over the categories with ground truth, at IoU
    .5 and .75 (all areas, 100 detections), in percent: {"recall": [...], "AP50": [...], "AP75": [...]}.
    Each curve's mean is the summary's AP50 / AP75 (the same slice of the same array)."""
    curves = {"recall": [round(float(r), 4) for r in recall_points]}
    for name, threshold in (("AP50", 0.5), ("AP75", 0.75)):
        at = precision[int(np.argmin(np.abs(iou_thresholds - threshold))), :, :, 0, -1]  # (R, K)
        valid = at > -1
        counted = valid.sum(axis=1)
        mean = np.where(counted > 0, np.where(valid, at, 0.0).sum(axis=1) / np.maximum(counted, 1), -1.0)
        curves[name] = [round(float(v) * 100, 3) if v > -1 else -1.0 for v in mean]
    return curves


def format_per_class(rows: list[dict]) -> str:
    """A table of `per_class_ap`'s rows, the most frequent class first."""
    lines = [f"{'class':<20} {'boxes':>7} {'AP':>7} {'AP50':>7} {'AP75':>7}"]
    for row in sorted(rows, key=lambda r: -r["gt_boxes"]):
        lines.append(
            f"{row['class'][:20]:<20} {row['gt_boxes']:>7} "
            + " ".join(f"{row[key]:>7.2f}" for key in ("AP", "AP50", "AP75"))
        )
    return "\n".join(lines)


def _backend_classes(backend: str):
    if backend == "pycocotools":
        return COCO, COCOeval
    from faster_coco_eval import COCO as FasterCOCO
    from faster_coco_eval import COCOeval_faster

    return FasterCOCO, functools.partial(COCOeval_faster, print_function=print)


def _as(coco_class, dataset: dict):
    """A `coco_class` index over `dataset` (the annotations, not a file)."""
    coco = coco_class()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _percent(value: float) -> float:
    return -1.0 if value < 0 else round(float(value) * 100, 3)


@torch.no_grad()
def run_inference(
    model, postprocessor, loader, device: torch.device, autocast_dtype: torch.dtype | None, evaluator: CocoEvaluator
) -> None:
    """Predict every batch of `loader` and feed the detections to `evaluator`."""
    was_training = model.training
    model.eval()
    try:
        for images, targets in loader:
            images = images.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                predictions = model(images)
            detections = postprocessor(predictions, [t["size"] for t in targets])
            evaluator.update(targets, detections)
    finally:
        model.train(was_training)


def format_metrics(stats: dict[str, float]) -> str:
    head = " | ".join(f"{k:>6}" for k in STAT_NAMES[:6])
    row = " | ".join(f"{stats[k]:6.2f}" for k in STAT_NAMES[:6])
    return f"{head}\n{row}"


class CocoValidator:
    """Runs the model over a validation loader and returns (stats, pycocotools table, detections).

    Under DDP each process's loader holds its own share of the images; the detections are
    gathered and scored on rank 0, and the other processes get None.
    """

    def __init__(
        self,
        loader,
        coco_gt: COCO,
        category_ids: list[int],
        postprocessor,
        device: torch.device,
        autocast_dtype: torch.dtype | None = None,
        image_dir: str | Path | None = None,
        backend: str = "auto",
    ):
        self.loader = loader
        self.backend = resolve_backend(backend)
        self.image_dir = image_dir
        self.coco_gt = coco_gt
        self.category_ids = category_ids
        self.postprocessor = postprocessor
        self.device = device
        self.autocast_dtype = autocast_dtype

    def __call__(self, model) -> tuple[dict[str, float], str, list[dict]] | None:
        evaluator = CocoEvaluator(self.coco_gt, self.category_ids, self.backend)
        run_inference(model, self.postprocessor, self.loader, self.device, self.autocast_dtype, evaluator)
        shares = gather_to_main([(evaluator.image_ids, evaluator.results)])  # one (ids, results) per process
        if shares is None:
            return None
        evaluator.image_ids = [image_id for ids, _ in shares for image_id in ids]
        evaluator.results = [result for _, results in shares for result in results]
        stats, table = evaluator.summarize()
        extras = {"per_class": evaluator.per_class, "pr_curves": evaluator.pr_curves, "errors": evaluator.errors}
        return {**stats, **extras}, table, evaluator.results

    def pictures(self, detections: list[dict], count: int = 4, score_thresh: float = 0.3) -> list[torch.Tensor]:
        """The first `count` validation images with their detections above `score_thresh` (red, with
        class and score) and ground truth (green), as [3, H, W] uint8 tensors for TensorBoard."""
        if self.image_dir is None:
            return []
        names = {c["id"]: c["name"] for c in self.coco_gt.dataset["categories"]}
        label_of = {category: label for label, category in enumerate(self.category_ids)}
        pictures = []
        for image_id in sorted(self.coco_gt.imgs)[:count]:
            try:
                image, _ = read_rgb(Path(self.image_dir) / self.coco_gt.imgs[image_id]["file_name"])
            except (OSError, ValueError, SyntaxError):  # already reported by the dataset; no picture of it
                continue
            mine = [d for d in detections if d["image_id"] == image_id and d["score"] >= score_thresh]
            truth = [a["bbox"] for a in self.coco_gt.imgToAnns.get(image_id, [])]
            pictures.append(
                draw_detections(
                    image,
                    _xyxy([d["bbox"] for d in mine]),
                    torch.tensor([label_of[d["category_id"]] for d in mine], dtype=torch.long),
                    torch.tensor([d["score"] for d in mine]),
                    [names[c] for c in self.category_ids],
                    _xyxy(truth),
                )
            )
        return pictures


def _xyxy(boxes: list[list[float]]) -> torch.Tensor:
    xywh = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
