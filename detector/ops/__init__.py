from detector.ops.atss import ATSSMatcher
from detector.ops.box_coder import BoxCoder
from detector.ops.matcher import BACKGROUND, IGNORE, IoUMatcher

__all__ = ["BoxCoder", "IoUMatcher", "ATSSMatcher", "BACKGROUND", "IGNORE"]
