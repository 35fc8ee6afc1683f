from detector.losses.classification import FocalLoss, FocalStarLoss, Poly1Loss, SigmoidCrossEntropyLoss
from detector.losses.criterion import RetinaNetCriterion
from detector.losses.dice import DiceLoss, TverskyLoss
from detector.losses.distribution import DistributionFocalLoss
from detector.losses.equalized import EqualizedFocalLoss
from detector.losses.ghm import GHMCLoss, GHMRLoss
from detector.losses.iou import (
    AlphaIoULoss,
    CDIoULoss,
    CIoULoss,
    DIoULoss,
    EIoULoss,
    FocalEIoULoss,
    GIoULoss,
    IoULoss,
    MPDIoULoss,
    SIoULoss,
    WiseIoULoss,
)
from detector.losses.ohem import OHEMLoss
from detector.losses.quality import QualityFocalLoss, VarifocalLoss
from detector.losses.regression import BalancedL1Loss, HuberLoss, L1Loss, L2Loss, SmoothL1Loss

__all__ = [
    "RetinaNetCriterion",
    "SigmoidCrossEntropyLoss",
    "FocalLoss",
    "FocalStarLoss",
    "Poly1Loss",
    "QualityFocalLoss",
    "VarifocalLoss",
    "EqualizedFocalLoss",
    "GHMCLoss",
    "DistributionFocalLoss",
    "OHEMLoss",
    "DiceLoss",
    "TverskyLoss",
    "SmoothL1Loss",
    "L1Loss",
    "L2Loss",
    "HuberLoss",
    "BalancedL1Loss",
    "GHMRLoss",
    "IoULoss",
    "GIoULoss",
    "DIoULoss",
    "CIoULoss",
    "EIoULoss",
    "FocalEIoULoss",
    "CDIoULoss",
    "AlphaIoULoss",
    "SIoULoss",
    "WiseIoULoss",
    "MPDIoULoss",
]
