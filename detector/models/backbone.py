"""ResNet body from torchvision returning C3, C4, C5 (strides 8, 16, 32)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import resnet
from torchvision.ops import FrozenBatchNorm2d

_RESNETS = {18: resnet.resnet18, 34: resnet.resnet34, 50: resnet.resnet50, 101: resnet.resnet101}
_NORMS = ("frozen_bn", "bn", "gn")


def _norm_layer(norm: str):
    if norm == "frozen_bn":
        return FrozenBatchNorm2d
    if norm == "bn":
        return nn.BatchNorm2d
    return lambda channels: nn.GroupNorm(32, channels)


IMAGENET_FILES = {
    18: "resnet18-f37072fd.pth",
    34: "resnet34-b627a593.pth",
    50: "resnet50-0676ba61.pth",
    101: "resnet101-63fe2227.pth",
}  # torchvision's IMAGENET1K_V1 files


class ResNetBackbone(nn.Module):
    """torchvision ResNet-18/34/50/101 without its classifier; forward returns [C3, C4, C5].

    Args:
        depth: 18, 34, 50 or 101.
        norm: "frozen_bn" (the paper, with ImageNet weights: statistics and affine frozen),
            "bn" (trainable BatchNorm, for training from scratch) or "gn" (GroupNorm, 32 groups).
        frozen_stages: leading stages whose parameters are frozen, counting the stem as stage 1
            (detectron2's FREEZE_AT): 0 trains everything, 2 freezes the stem and res2.
        weights_path: a torchvision ResNet state dict on local disk (e.g. the file torchvision
            caches under $TORCH_HOME/hub/checkpoints/); None trains from scratch. Never downloads.
    """

    def __init__(
        self, depth: int = 50, norm: str = "frozen_bn", frozen_stages: int = 2, weights_path: str | None = None
    ):
        super().__init__()
        if depth not in _RESNETS:
            raise ValueError(f"backbone depth must be one of {sorted(_RESNETS)}, got {depth}")
        if norm not in _NORMS:
            raise ValueError(f"backbone norm must be one of {_NORMS}, got {norm!r}")
        if not 0 <= frozen_stages <= 5:
            raise ValueError(f"backbone frozen_stages must be in [0, 5], got {frozen_stages}")
        body = _RESNETS[depth](weights=None, norm_layer=_norm_layer(norm))
        if weights_path is not None:
            load_torchvision_resnet_weights(body, weights_path)
        self.stem = nn.Sequential(body.conv1, body.bn1, body.relu, body.maxpool)
        self.stages = nn.ModuleList([body.layer1, body.layer2, body.layer3, body.layer4])
        for module in [self.stem, *self.stages][:frozen_stages]:
            for parameter in module.parameters():
                parameter.requires_grad_(False)
        width = 64 if depth < 50 else 256
        self.out_channels = [width * 2, width * 4, width * 8]

    def forward(self, images: Tensor) -> list[Tensor]:
        x = self.stem(images)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features[1:]


def frozen_without_weights(depth: int, norm: str, frozen_stages: int, weights_path: str | None) -> str | None:
    """Why training this backbone would freeze random layers (None when it would not): frozen
    BatchNorm without ImageNet statistics is the identity, and frozen stages keep their random
    initialisation."""
    if weights_path is not None or (norm != "frozen_bn" and frozen_stages == 0):
        return None
    frozen = [f"norm={norm}"] * (norm == "frozen_bn") + [f"frozen_stages={frozen_stages}"] * (frozen_stages > 0)
    return (
        f"model.backbone has {' and '.join(frozen)} but no weights_path: training would freeze randomly "
        f"initialised layers{' and an identity BatchNorm' if norm == 'frozen_bn' else ''}. Place torchvision's "
        f"ImageNet ResNet-{depth} state dict ({IMAGENET_FILES.get(depth, f'resnet{depth}-*.pth')}) on disk and set "
        "model.backbone.weights_path=/path/to/it, or train from scratch with model.backbone.norm=bn (or gn) "
        "model.backbone.frozen_stages=0 (model=retinanet_r18_cpu does)."
    )


def load_torchvision_resnet_weights(body: resnet.ResNet, weights_path: str) -> None:
    """Load a torchvision ImageNet ResNet state dict from `weights_path` (the `fc.*` keys are
    dropped), or the backbone of one of this project's checkpoints (a dict with a "model" entry)."""
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"model.backbone.weights_path={weights_path}: no such file. Place a torchvision ResNet "
            "state dict there (e.g. resnet50-0676ba61.pth), or set it to null to train from scratch."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state.get("model"), dict):
        state = _backbone_of_checkpoint(state["model"])
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        missing, unexpected = body.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise ValueError(f"{path} is not a torchvision ResNet of this depth: {str(error)[:300]}") from None
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(
            f"{path} is not a torchvision ResNet of this depth: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def _backbone_of_checkpoint(model_state: dict) -> dict:
    """torchvision ResNet keys of the `backbone.*` tensors of a RetinaNet state dict."""
    prefixes = {
        "backbone.stem.0.": "conv1.",
        "backbone.stem.1.": "bn1.",
        **{f"backbone.stages.{i}.": f"layer{i + 1}." for i in range(4)},
    }
    return {
        target + key[len(prefix) :]: value
        for key, value in model_state.items()
        for prefix, target in prefixes.items()
        if key.startswith(prefix)
    }
