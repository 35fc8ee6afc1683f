"""Parameter groups: which parameters the optimizer decays, and at which learning rate."""

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from detector.engine.optimizer import build_optimizer, parameter_groups


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)  # weight + bias
        self.gn = nn.GroupNorm(2, 4)  # norm weight + bias
        self.bn = nn.BatchNorm2d(4)  # norm weight + bias
        self.frozen = nn.Conv2d(4, 4, 1, bias=False)
        self.frozen.weight.requires_grad_(False)
        self.head = nn.Conv2d(4, 2, 1)  # weight + bias (the π-prior bias in RetinaNet)
        self.tied = self.head  # a module seen twice keeps its parameters once


def by_name(groups):
    return {g["name"]: g for g in groups}


def test_three_groups_with_their_decay_and_learning_rate():
    model = Small()
    groups = by_name(
        parameter_groups(
            model, lr=0.01, weight_decay=1e-4, norm_weight_decay=0.0, bias_weight_decay=0.0, bias_lr_factor=2.0
        )
    )
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    assert ids["weight"] == {id(model.conv.weight), id(model.head.weight)}
    assert ids["norm"] == {id(model.gn.weight), id(model.gn.bias), id(model.bn.weight), id(model.bn.bias)}
    assert ids["bias"] == {id(model.conv.bias), id(model.head.bias)}
    assert [(g["weight_decay"], g["lr"]) for g in groups.values()] == [(1e-4, 0.01), (0.0, 0.01), (0.0, 0.02)]
    assert sum(len(g["params"]) for g in groups.values()) == sum(p.requires_grad for p in model.parameters())


def test_null_decays_follow_weight_decay():
    groups = parameter_groups(Small(), lr=0.1, weight_decay=0.05)
    assert {g["weight_decay"] for g in groups} == {0.05} and {g["lr"] for g in groups} == {0.1}


@pytest.mark.parametrize(
    "option,decay,bias_lr", [("sgd", 1e-4, 0.02), ("adamw", 0.05, 1e-4), ("adamw_scratch", 0.05, 2e-3)]
)
def test_each_recipe_leaves_norm_and_bias_undecayed(compose_cfg, option, decay, bias_lr):
    """Detectron (optim=sgd): no decay on biases, twice their LR, none on GroupNorm; the AdamW
    recipes: no decay on biases and norms (timm). The RetinaNet's prior bias is in the bias group."""
    cfg = compose_cfg([f"optim={option}"])
    model = Small()
    optimizer = build_optimizer(cfg.optim, model)
    groups = by_name(optimizer.param_groups)
    assert groups["weight"]["weight_decay"] == decay
    assert groups["norm"]["weight_decay"] == 0.0 and groups["bias"]["weight_decay"] == 0.0
    assert groups["bias"]["lr"] == pytest.approx(bias_lr)


def test_adamw_decays_weights_only():
    """With zero gradients AdamW's only change is its decoupled decay: weights shrink by lr·decay,
    norms and biases stay."""
    model = Small()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = build_optimizer(
        OmegaConf.create(
            {
                "_target_": "torch.optim.AdamW",
                "_partial_": True,
                "lr": 0.1,
                "weight_decay": 0.5,
                "norm_weight_decay": 0.0,
                "bias_weight_decay": 0.0,
            }
        ),
        model,
    )
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in model.named_parameters():
        expected = before[name] * (
            0.95 if name.endswith("weight") and not name.startswith(("gn", "bn", "frozen")) else 1.0
        )
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=0, msg=name)


def test_bad_group_values_are_refused():
    with pytest.raises(ValueError, match="bias_lr_factor must be > 0"):
        parameter_groups(Small(), 0.1, 0.0, bias_lr_factor=0.0)
    with pytest.raises(ValueError, match=r"norm_weight_decay must be >= 0 or null \(optim.weight_decay\)"):
        parameter_groups(Small(), 0.1, 0.0, norm_weight_decay=-1.0)
