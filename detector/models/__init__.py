from detector.models.anchors import AnchorGenerator
from detector.models.backbone import ResNetBackbone
from detector.models.fpn import RetinaNetFPN
from detector.models.head import RetinaNetHead
from detector.models.retinanet import RetinaNet

__all__ = ["AnchorGenerator", "ResNetBackbone", "RetinaNetFPN", "RetinaNetHead", "RetinaNet"]
