import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss as tv_sigmoid_focal_loss

from detector.losses import FocalLoss, FocalStarLoss, GHMCLoss, SigmoidCrossEntropyLoss, SmoothL1Loss
from detector.ops import blocks


def logits_and_targets(m=64, k=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(m, k, generator=g, dtype=dtype) * 4
    logits[0, :] = torch.tensor([-40.0, -30.0, 30.0, 40.0, 0.0], dtype=dtype)[:k]  # saturated
    targets = (torch.rand(m, k, generator=g) < 0.1).to(dtype)
    targets[0, :] = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0], dtype=dtype)[:k]
    return logits, targets


def focal_reference(x, y, alpha, gamma):
    """FL written from the paper in float64: −α_t (1 − p_t)^γ log p_t, log p_t via log-sigmoid."""
    x, y = x.double(), y.double()
    p = torch.sigmoid(x)
    p_t = torch.where(y == 1, p, 1 - p)
    log_p_t = torch.where(y == 1, F.logsigmoid(x), F.logsigmoid(-x))
    alpha_t = 1.0 if alpha is None else torch.where(y == 1, alpha, 1 - alpha)
    return (-alpha_t * (1 - p_t) ** gamma * log_p_t).sum()


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.75, 0.0), (None, 1.0), (0.5, 0.5), (0.25, 5.0)])
def test_focal_matches_float64_formula_and_torchvision(alpha, gamma):
    x, y = logits_and_targets()
    loss = FocalLoss(alpha=alpha, gamma=gamma)(x, y, normalizer=7.0)
    torch.testing.assert_close(loss, focal_reference(x, y, alpha, gamma) / 7.0, rtol=1e-10, atol=1e-12)
    expected_tv = tv_sigmoid_focal_loss(x, y, alpha=-1 if alpha is None else alpha, gamma=gamma, reduction="sum")
    torch.testing.assert_close(loss, expected_tv / 7.0)


def test_focal_float32_saturated_is_finite_with_finite_gradients():
    x, y = logits_and_targets(dtype=torch.float32)
    x.requires_grad_(True)
    loss = FocalLoss()(x, y, torch.tensor(3.0))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    torch.testing.assert_close(loss.double(), focal_reference(x.detach(), y, 0.25, 2.0) / 3.0, rtol=1e-5, atol=1e-6)


def test_focal_with_gamma_zero_and_no_alpha_is_cross_entropy():
    x, y = logits_and_targets()
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="sum")
    torch.testing.assert_close(FocalLoss(alpha=None, gamma=0.0)(x, y, 1.0), ce)


def test_focal_gradcheck():
    x, y = logits_and_targets(m=6, k=3)
    x = (x.clamp(-6, 6)).requires_grad_(True)
    for gamma in (0.0, 0.5, 2.0):
        assert torch.autograd.gradcheck(lambda z, g=gamma: FocalLoss(0.25, g)(z, y, 2.0), (x,))


def test_focal_gradient_is_appendix_b():
    """dFL/dx = α_t · y(1 − p_t)^γ (γ p_t log p_t + p_t − 1), y ∈ {±1} (FL paper, Appendix B)."""
    x, y = logits_and_targets(m=32, k=4)
    x.requires_grad_(True)
    gamma, alpha = 2.0, 0.25
    FocalLoss(alpha, gamma)(x, y, 1.0).backward()
    sign = 2 * y - 1
    p_t = torch.sigmoid(sign * x.detach())
    alpha_t = torch.where(y == 1, alpha, 1 - alpha)
    expected = alpha_t * sign * (1 - p_t) ** gamma * (gamma * p_t * torch.log(p_t) + p_t - 1)
    torch.testing.assert_close(x.grad, expected, rtol=1e-8, atol=1e-10)


def test_focal_empty_input_is_zero():
    loss = FocalLoss()(torch.zeros(0, 6), torch.zeros(0, 6), 1.0)
    assert loss.item() == 0.0


@pytest.mark.parametrize(
    "kwargs,message", [({"gamma": -1.0}, "gamma must be >= 0"), ({"alpha": 1.5}, r"alpha must be in \[0, 1\]")]
)
def test_focal_rejects_invalid_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FocalLoss(**kwargs)


def smooth_l1_reference(d, beta):
    d = d.abs().double()
    if beta == 0:
        return d.sum()
    return torch.where(d < beta, 0.5 * d**2 / beta, d - 0.5 * beta).sum()


@pytest.mark.parametrize("beta", [0.0, 0.11, 1.0])
def test_smooth_l1_matches_formula_and_torch(beta):
    g = torch.Generator().manual_seed(1)
    pred, target = (
        torch.randn(50, 4, generator=g, dtype=torch.float64),
        torch.randn(50, 4, generator=g, dtype=torch.float64),
    )
    loss = SmoothL1Loss(beta)(pred, target, 4.0)
    torch.testing.assert_close(loss, smooth_l1_reference(pred - target, beta) / 4.0)
    torch.testing.assert_close(loss, F.smooth_l1_loss(pred, target, beta=beta, reduction="sum") / 4.0)
    pred.requires_grad_(True)
    if beta > 0:
        assert torch.autograd.gradcheck(lambda p: SmoothL1Loss(beta)(p, target, 4.0), (pred,))


def test_smooth_l1_empty_is_exactly_zero_and_declares_deltas():
    assert SmoothL1Loss.input_space == "deltas"
    assert SmoothL1Loss()(torch.zeros(0, 4), torch.zeros(0, 4), 1.0).item() == 0.0
    with pytest.raises(ValueError, match="beta must be >= 0"):
        SmoothL1Loss(beta=-0.1)


@pytest.mark.parametrize(
    "loss",
    [FocalLoss(), FocalLoss(0.75, 0.5), SigmoidCrossEntropyLoss(0.75), FocalStarLoss(4.0, 0.0), GHMCLoss(30, 0.0)],
    ids=["focal", "focal_g05", "balanced_ce", "focal_star", "ghm_c"],
)
def test_losses_computed_in_blocks_of_rows_equal_the_whole(loss, monkeypatch):
    """Blocks of 8 rows × 8 classes over 101 rows (the last block short): value and gradient equal the
    autograd sum of the element-wise terms. GHM-C's weights need all elements at once, so it stays whole."""
    monkeypatch.setitem(blocks.BLOCK_ELEMENTS, "cpu", 64)
    calls = []
    value_and_gradient = loss._value_and_gradient
    monkeypatch.setattr(loss, "_value_and_gradient", lambda *a: calls.append(1) or value_and_gradient(*a))
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(101, 8, generator=g, dtype=torch.float64) * 4).requires_grad_(True)
    y = (torch.rand(101, 8, generator=g) < 0.1).double()
    reference_x = x.detach().clone().requires_grad_(True)
    reference = loss.elementwise(reference_x, y).sum() / (y.numel() if isinstance(loss, GHMCLoss) else 7.0)
    reference.backward()
    value = loss(x, y, 7.0)
    value.backward()
    torch.testing.assert_close(value, reference.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, reference_x.grad, rtol=1e-10, atol=1e-14)
    assert len(calls) == (1 if isinstance(loss, GHMCLoss) else 13)  # ⌈101 / 8⌉ blocks
