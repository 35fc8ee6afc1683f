from detector.data.coco import CocoDetection, CocoSplits, coco_splits
from detector.data.synthetic import prepare_synthetic_coco

__all__ = ["CocoDetection", "CocoSplits", "coco_splits", "prepare_synthetic_coco"]
