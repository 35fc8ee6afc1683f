"""The optimizer over a model's trainable parameters, in up to three groups: weights, norm
parameters and biases, each with its own weight decay (detectron2's SOLVER.WEIGHT_DECAY_NORM and
WEIGHT_DECAY_BIAS) and the biases with their own learning-rate factor (BIAS_LR_FACTOR; Detectron's
BIAS_DOUBLE_LR is 2)."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

GROUP_KEYS = ("norm_weight_decay", "bias_weight_decay", "bias_lr_factor")
NORMS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)


def parameter_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    norm_weight_decay: float | None = None,
    bias_weight_decay: float | None = None,
    bias_lr_factor: float = 1.0,
) -> list[dict]:
    """The trainable parameters as optimizer groups named "weight", "norm" and "bias" (empty ones left out).

    "norm": every parameter of a normalisation layer (BatchNorm, SyncBatchNorm, GroupNorm, LayerNorm,
    InstanceNorm), decayed by `norm_weight_decay`; "bias": the other layers' biases (the π-prior bias
    among them), decayed by `bias_weight_decay`, learning rate × `bias_lr_factor`; "weight": the rest,
    decayed by `weight_decay`. A decay of None is `weight_decay`: with both None and factor 1 every
    parameter is treated alike.
    """
    check_group_settings(norm_weight_decay, bias_weight_decay, bias_lr_factor)
    members: dict[str, list[nn.Parameter]] = {"weight": [], "norm": [], "bias": []}
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if param.requires_grad and id(param) not in seen:
                seen.add(id(param))
                members["norm" if isinstance(module, NORMS) else "bias" if name == "bias" else "weight"].append(param)
    settings = {
        "weight": (weight_decay, 1.0),
        "norm": (weight_decay if norm_weight_decay is None else norm_weight_decay, 1.0),
        "bias": (weight_decay if bias_weight_decay is None else bias_weight_decay, bias_lr_factor),
    }
    return [
        {"name": kind, "params": members[kind], "weight_decay": decay, "lr": lr * factor}
        for kind, (decay, factor) in settings.items()
        if members[kind]
    ]


def check_group_settings(
    norm_weight_decay: float | None = None, bias_weight_decay: float | None = None, bias_lr_factor: float = 1.0
) -> None:
    if bias_lr_factor <= 0:
        raise ValueError(f"optim.bias_lr_factor must be > 0, got {bias_lr_factor}")
    for key, value in (("norm_weight_decay", norm_weight_decay), ("bias_weight_decay", bias_weight_decay)):
        if value is not None and value < 0:
            raise ValueError(f"optim.{key} must be >= 0 or null (optim.weight_decay), got {value}")


def build_optimizer(optim: DictConfig, model: nn.Module):
    """`optim` (a partial optimizer config with `lr`, `weight_decay` and the group keys) over the
    model's `parameter_groups`."""
    config = OmegaConf.to_container(optim, resolve=True)
    groups = {key: config.pop(key) for key in GROUP_KEYS if key in config}
    return instantiate(config)(parameter_groups(model, config["lr"], config.get("weight_decay", 0.0), **groups))
