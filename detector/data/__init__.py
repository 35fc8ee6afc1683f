from detector.data.coco import CocoDetection, CocoSplits, check_split, coco_splits
from detector.data.synthetic import prepare_synthetic_coco

__all__ = ["CocoDetection", "CocoSplits", "check_split", "coco_splits", "prepare_synthetic_coco"]
