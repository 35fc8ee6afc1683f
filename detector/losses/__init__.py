from detector.losses.classification import FocalLoss
from detector.losses.criterion import RetinaNetCriterion
from detector.losses.regression import SmoothL1Loss

__all__ = ["FocalLoss", "RetinaNetCriterion", "SmoothL1Loss"]
