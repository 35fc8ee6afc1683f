"""Every loss against an independent float64 reference written from its paper, plus library
comparisons, known identities, gradchecks and degenerate inputs."""

import functools
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.ops as tvops

from detector import losses as L
from detector.losses import iou as iou_module


def cls_inputs(m=40, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g, dtype=torch.float64) * 3
    x[0] = torch.tensor([-35.0, 35.0, -30.0, 30.0])[:k]  # saturated logits
    y = (torch.rand(m, k, generator=g) < 0.15).double()
    y[0] = torch.tensor([1.0, 0.0, 0.0, 1.0])[:k]
    return x, y


def log_p_t(x, y):
    return torch.where(y == 1, F.logsigmoid(x), F.logsigmoid(-x))


def alpha_t(y, alpha):
    return 1.0 if alpha is None else torch.where(y == 1, y.new_tensor(alpha), y.new_tensor(1 - alpha))


# ----------------------------------------------------------------------------- classification
@pytest.mark.parametrize("alpha", [None, 0.1, 0.75, 0.999])
def test_cross_entropy_and_balanced(alpha):
    x, y = cls_inputs()
    expected = (-alpha_t(y, alpha) * log_p_t(x, y)).sum() / 5.0
    torch.testing.assert_close(L.SigmoidCrossEntropyLoss(alpha)(x, y, 5.0), expected, rtol=1e-12, atol=1e-12)
    if alpha is None:
        torch.testing.assert_close(expected * 5, F.binary_cross_entropy_with_logits(x, y, reduction="sum"))


@pytest.mark.parametrize("gamma,beta,alpha", [(2.0, 1.0, 0.25), (4.0, 0.0, 0.25), (1.0, -0.5, None), (0.5, 2.0, 0.75)])
def test_focal_star_formula_and_appendix_b_gradient(gamma, beta, alpha):
    x, y = cls_inputs()
    sign = 2 * y - 1
    expected = (-alpha_t(y, alpha) * F.logsigmoid(gamma * sign * x + beta) / gamma).sum() / 3.0
    x.requires_grad_(True)
    loss = L.FocalStarLoss(gamma, beta, alpha)(x, y, 3.0)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    loss.backward()
    p_star_t = torch.sigmoid(gamma * sign * x.detach() + beta)
    torch.testing.assert_close(x.grad, alpha_t(y, alpha) * sign * (p_star_t - 1) / 3.0, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "alpha,gamma,epsilon", [(0.25, 2.0, 1.0), (None, 0.0, 1.0), (0.25, 2.0, -1.0), (0.5, 1.0, 2.5)]
)
def test_poly1_is_focal_loss_plus_epsilon_times_the_next_taylor_term(alpha, gamma, epsilon):
    """Poly-1 = −α_t (1 − p_t)^γ log p_t + ε (1 − p_t)^(γ+1) (γ = 0, α = None: CE + ε (1 − p_t)),
    written with p_t = σ(x) or 1 − σ(x), saturated logits included; its gradient by autograd of that."""
    x, y = cls_inputs()
    x.requires_grad_(True)
    p_t = torch.where(y == 1, torch.sigmoid(x), 1 - torch.sigmoid(x))
    expected = (
        -alpha_t(y, alpha) * (1 - p_t) ** gamma * log_p_t(x, y) + epsilon * (1 - p_t) ** (gamma + 1)
    ).sum() / 3.0
    (expected_gradient,) = torch.autograd.grad(expected, x)
    value = L.Poly1Loss(alpha, gamma, epsilon)(x, y, 3.0)
    torch.testing.assert_close(value, expected.detach(), rtol=1e-12, atol=1e-12)
    (gradient,) = torch.autograd.grad(value, x)
    torch.testing.assert_close(gradient, expected_gradient, rtol=1e-10, atol=1e-12)
    if epsilon == 1.0 and gamma == 0.0:  # CE + (1 − p_t) by hand at x = 0, y = 1: log 2 + 1/2
        torch.testing.assert_close(
            L.Poly1Loss(None, 0.0, 1.0)(
                torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64), 1.0
            ),
            torch.tensor(math.log(2) + 0.5, dtype=torch.float64),
        )


def soft_inputs(m=40, k=4, seed=0):
    """Logits (saturated ones included) and targets with IoU values in (0, 1] on some positives, 0 elsewhere."""
    x, y = cls_inputs(m, k, seed)
    g = torch.Generator().manual_seed(seed + 100)
    return x, y * (0.05 + 0.95 * torch.rand(y.shape, generator=g, dtype=torch.float64))


def test_quality_focal_loss_is_its_formula():
    """QFL = −|y − σ|^β ((1 − y) log(1 − σ) + y log σ), element by element with math.log."""
    x, y = soft_inputs()
    total = 0.0
    for xi, yi in zip(x.flatten().tolist(), y.flatten().tolist()):
        sigma = 1 / (1 + math.exp(-xi))
        log_sigma = -math.log1p(math.exp(-xi)) if xi > 0 else xi - math.log1p(math.exp(xi))  # stable at ±35
        log_one_minus = log_sigma - xi
        total += -(abs(yi - sigma) ** 2) * ((1 - yi) * log_one_minus + yi * log_sigma)
    torch.testing.assert_close(
        L.QualityFocalLoss()(x, y, 4.0), torch.tensor(total / 4.0, dtype=torch.float64), rtol=1e-10, atol=1e-12
    )


def test_varifocal_loss_is_its_formula():
    """VFL = −q (q log p + (1 − q) log(1 − p)) for q > 0, −α p^γ log(1 − p) for q = 0."""
    x, y = soft_inputs(seed=1)
    total = 0.0
    for xi, q in zip(x.flatten().tolist(), y.flatten().tolist()):
        log_p = -math.log1p(math.exp(-xi)) if xi > 0 else xi - math.log1p(math.exp(xi))
        log_one_minus_p = log_p - xi
        p = math.exp(log_p)
        total += -q * (q * log_p + (1 - q) * log_one_minus_p) if q > 0 else -0.75 * p**2 * log_one_minus_p
    torch.testing.assert_close(
        L.VarifocalLoss()(x, y, 2.0), torch.tensor(total / 2.0, dtype=torch.float64), rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("loss", [L.QualityFocalLoss(), L.VarifocalLoss()], ids=lambda loss: type(loss).__name__)
def test_soft_target_losses_gradcheck_on_soft_targets(loss):
    x, y = soft_inputs(m=8, k=3, seed=5)
    x = x.clamp(-5, 5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: loss(z, y, 2.0), (x,))


def efl_reference(x, y, g, alpha=0.25, gamma_b=2.0, scale=8.0):
    """−α_t (γ_j/γ_b) (1 − p_t)^γ_j log p_t, γ_j = γ_b + s (1 − g_j), in float64 with autograd."""
    gamma_j = gamma_b + scale * (1 - g)
    p_t = torch.where(y == 1, torch.sigmoid(x), 1 - torch.sigmoid(x))
    return -alpha_t(y, alpha) * gamma_j / gamma_b * (1 - p_t) ** gamma_j * log_p_t(x, y)


def test_equalized_focal_loss_over_iterations_against_its_accumulated_gradient_ratio():
    """g_j starts at 1 (EFL = FL); after each step it is clamp(Σ|∂L/∂x| on class j's positives /
    Σ|∂L/∂x| on its negatives, 0, 1) over all steps so far, the gradients those of the loss the step
    used (divided by its normalizer); the next step's loss uses it. Resumed from a state dict, a
    fresh loss continues bit-identically; evaluation leaves the state alone."""
    loss = L.EqualizedFocalLoss().double()
    pos = torch.zeros(4, dtype=torch.float64)
    neg = torch.zeros(4, dtype=torch.float64)
    g = torch.ones(4, dtype=torch.float64)
    values = []
    for step in range(3):
        x, y = cls_inputs(m=60, seed=10 + step)
        x.requires_grad_(True)
        normalizer = 2.0 + step
        expected = efl_reference(x, y, g).sum() / normalizer
        (gradient,) = torch.autograd.grad(expected, x)
        value = loss(x, y, normalizer)
        values.append(value.detach())
        torch.testing.assert_close(value, expected.detach(), rtol=1e-12, atol=1e-12)
        (fused_gradient,) = torch.autograd.grad(value, x)
        torch.testing.assert_close(fused_gradient, gradient, rtol=1e-10, atol=1e-12)
        if step == 0:
            torch.testing.assert_close(value, L.FocalLoss()(x, y, normalizer))
        pos += (gradient.abs() * y).sum(0)
        neg += (gradient.abs() * (1 - y)).sum(0)
        g = (pos / (neg + 1e-10)).clamp(0, 1)
        torch.testing.assert_close(loss.pos_neg, g, rtol=1e-10, atol=1e-12)
        if step == 1:
            resumed = L.EqualizedFocalLoss().double()
            resumed.load_state_dict(loss.state_dict())
    x, y = cls_inputs(m=60, seed=12)
    assert torch.equal(resumed(x, y, 4.0), values[2])  # step 2 again, from the state saved after step 1
    state = loss.eval().pos_neg.clone()
    loss(x, y, 4.0)
    assert torch.equal(loss.pos_neg, state)
    for m in (0, 5):  # every anchor ignored, and no positives: finite, and nothing to learn from
        empty = L.EqualizedFocalLoss().double()
        z = torch.randn(m, 4, dtype=torch.float64, requires_grad=True)
        value = empty(z, torch.zeros(m, 4, dtype=torch.float64), 1.0)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(z.grad).all()
        if m == 0:
            assert value.item() == 0.0
        else:  # only negative gradient so far: g = 0, the strongest focusing
            assert torch.equal(empty.pos_neg, torch.zeros(4, dtype=torch.float64))
    assert g.min() < 0.5  # the classes' ratios moved: the sequence above is not FL's


def test_equalized_focal_loss_keeps_its_state_through_a_non_finite_step():
    """A NaN logit (a step the trainer skips) leaves the gradient sums of its class as they were."""
    loss = L.EqualizedFocalLoss().double()
    x, y = cls_inputs(m=20, seed=6)
    loss(x, y, 2.0)
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    x[3, 1] = float("nan")
    loss(x, y, 2.0)
    assert torch.equal(loss.pos_grad[1], before["pos_grad"][1]) and torch.equal(loss.pos_neg[1], before["pos_neg"][1])
    assert not torch.equal(loss.pos_grad[0], before["pos_grad"][0])  # the other classes move on


def test_equalized_focal_loss_gradcheck_with_its_state_fixed():
    loss = L.EqualizedFocalLoss().double()
    x, y = cls_inputs(m=8, k=3, seed=5)
    loss(x, y, 1.0)  # a step, so that the classes' γ differ
    loss.eval()
    x = x.clamp(-5, 5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: loss(z, y, 2.0), (x,))


def test_focal_star_with_beta_zero_matches_fvcore_formula():
    """fvcore's sigmoid_focal_loss_star (no β): −log σ(γ·x_t)/γ, α-balanced."""
    x, y = cls_inputs()
    shifted = x * (2 * y - 1)
    fvcore = (-F.logsigmoid(2.0 * shifted) / 2.0 * alpha_t(y, 0.25)).sum()
    torch.testing.assert_close(L.FocalStarLoss(2.0, 0.0, 0.25)(x, y, 1.0), fvcore)


def ghm_reference(values, g, bins, momentum, acc, last_edge, elementwise):
    """The official GHM code's loop over bins, in float64."""
    edges = [i / bins for i in range(bins + 1)]
    edges[-1] = last_edge
    tot = max(g.numel(), 1)
    weights = torch.zeros_like(g)
    n = 0
    for i in range(bins):
        inds = (g >= edges[i]) & (g < edges[i + 1])
        num = int(inds.sum())
        if num > 0:
            if momentum > 0:
                acc[i] = momentum * acc[i] + (1 - momentum) * num
                weights[inds] = tot / acc[i]
            else:
                weights[inds] = tot / num
            n += 1
    if n > 0:
        weights = weights / n
    return (elementwise * weights).sum() / tot


@pytest.mark.parametrize("bins,momentum", [(30, 0.75), (10, 0.0), (5, 0.5), (1, 0.0)])
def test_ghm_c_matches_official_loop_over_iterations(bins, momentum):
    loss = L.GHMCLoss(bins, momentum).double()
    acc = [0.0] * bins
    for seed in range(3):
        x, y = cls_inputs(seed=seed)
        g = (torch.sigmoid(x) - y).abs()
        expected = ghm_reference(
            x, g, bins, momentum, acc, 1 + 1e-6, F.binary_cross_entropy_with_logits(x, y, reduction="none")
        )
        torch.testing.assert_close(loss(x, y, None), expected, rtol=1e-10, atol=1e-12)
    if momentum > 0:
        torch.testing.assert_close(loss.acc_sum, torch.tensor(acc, dtype=torch.float64))


def test_ghm_c_one_bin_no_momentum_is_mean_bce():
    x, y = cls_inputs()
    torch.testing.assert_close(
        L.GHMCLoss(bins=1, momentum=0.0)(x, y, 123.0), F.binary_cross_entropy_with_logits(x, y, reduction="mean")
    )


def test_ghm_c_ema_by_hand():
    """Two bins, momentum 0.5. Iteration 1: g = [.1, .2, .3, .9] → counts [3, 1], acc = [1.5, 0.5],
    weights 4/1.5/2 and 4/0.5/2. Iteration 2: g = [.6, .7, .8, .95] → counts [0, 4], acc = [1.5, 2.25]
    (empty bins keep their EMA), weights 4/2.25/1."""
    loss = L.GHMCLoss(bins=2, momentum=0.5).double()
    y = torch.zeros(4, 1, dtype=torch.float64)
    for g, acc, w in [
        ([0.1, 0.2, 0.3, 0.9], [1.5, 0.5], [4 / 1.5 / 2] * 3 + [4 / 0.5 / 2]),
        ([0.6, 0.7, 0.8, 0.95], [1.5, 2.25], [4 / 2.25] * 4),
    ]:
        x = torch.logit(torch.tensor(g, dtype=torch.float64)).view(4, 1)  # σ(x) − 0 = g
        bce = F.binary_cross_entropy_with_logits(x, y, reduction="none").view(-1)
        torch.testing.assert_close(loss(x, y, None), (bce * torch.tensor(w, dtype=torch.float64)).sum() / 4)
        torch.testing.assert_close(loss.acc_sum, torch.tensor(acc, dtype=torch.float64))
    assert "acc_sum" in loss.state_dict()


def ohem_reference(x, y, image_index, k, ratio):
    """Per-image loops: hardest k by CE; with a ratio, the hardest min(positives, k/(1 + ratio))
    positives and at most ratio negatives per kept positive."""
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none").sum(1)
    total = x.new_zeros(())
    for image in image_index.unique():
        rows = (image_index == image).nonzero().flatten().tolist()
        rows.sort(key=lambda r: -float(ce[r]))
        if ratio is None:
            chosen = rows[:k]
        else:
            pos = [r for r in rows if y[r].max() > 0][: int(k / (1 + ratio))]
            neg = [r for r in rows if y[r].max() == 0][: min(k - len(pos), int(ratio * len(pos)))]
            chosen = pos + neg
        total = total + ce[chosen].sum()
    return total


@pytest.mark.parametrize("k,ratio", [(5, None), (8, 3.0), (3, 1.0), (100, None)])
def test_ohem_selection_matches_per_image_reference(k, ratio):
    x, y = cls_inputs(m=60, seed=3)
    image_index = torch.arange(60) % 3
    anchors = torch.rand(60, 4, dtype=torch.float64)
    loss = L.OHEMLoss(batch_size_per_image=k, neg_pos_ratio=ratio, nms_thresh=None)
    torch.testing.assert_close(
        loss(x, y, 2.0, image_index=image_index, anchors=anchors), ohem_reference(x, y, image_index, k, ratio) / 2.0
    )


def test_ohem_1_to_3_keeps_at_most_three_negatives_per_positive():
    """40 positives and 1000 negatives in one image, scored by their CE, every positive harder than
    every negative: with k = 128 the minibatch is 32 positives and 96 negatives (1:3), with k = 512
    it is the 40 positives and 120 negatives (still 1:3; filling up the batch would give 1:11.8);
    without positives, nothing."""
    ce_order = torch.linspace(4.0, -4.0, 1040, dtype=torch.float64).unsqueeze(1)
    y = torch.zeros(1040, 1, dtype=torch.float64)
    y[:40] = 1.0
    image_index = torch.zeros(1040, dtype=torch.long)
    for k, pos, neg in [(128, 32, 96), (256, 40, 120), (512, 40, 120)]:
        kept = L.OHEMLoss(batch_size_per_image=k, neg_pos_ratio=3.0, nms_thresh=None).select(
            ce_order.view(-1), y.view(-1) > 0, image_index, torch.zeros(1040, 4)
        )
        assert (int((kept < 40).sum()), int((kept >= 40).sum())) == (pos, neg), k
        assert sorted(kept.tolist()) == list(range(pos)) + list(range(40, 40 + neg))  # the hardest of each
    nothing = L.OHEMLoss(batch_size_per_image=128, neg_pos_ratio=3.0, nms_thresh=None).select(
        ce_order.view(-1)[40:], torch.zeros(1000, dtype=torch.bool), image_index[40:], torch.zeros(1000, 4)
    )
    assert len(nothing) == 0


def test_ohem_nms_on_loss_drops_an_overlapping_easier_anchor():
    x = torch.tensor([[3.0], [2.0], [1.0]], dtype=torch.float64)  # all negatives: loss grows with x
    y = torch.zeros(3, 1, dtype=torch.float64)
    anchors = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], dtype=torch.float64)
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none").view(-1)
    loss = L.OHEMLoss(batch_size_per_image=2, nms_thresh=0.5)
    kept = loss(x, y, 1.0, image_index=torch.zeros(3, dtype=torch.long), anchors=anchors)
    torch.testing.assert_close(kept, ce[0] + ce[2])  # anchor 1 overlaps the harder anchor 0


@pytest.mark.parametrize("alpha,beta", [(0.5, 0.5), (0.3, 0.7), (0.0, 1.0)])
def test_tversky_and_dice_per_class(alpha, beta):
    x, y = cls_inputs()
    p = torch.sigmoid(x)
    per_class = []
    for k in range(x.shape[1]):
        tp = sum(float(p[m, k] * y[m, k]) for m in range(len(x)))
        fp = sum(float(p[m, k] * (1 - y[m, k])) for m in range(len(x)))
        fn = sum(float((1 - p[m, k]) * y[m, k]) for m in range(len(x)))
        per_class.append(1 - (tp + 1) / (tp + alpha * fp + beta * fn + 1))
    expected = torch.tensor(sum(per_class) / len(per_class), dtype=torch.float64)
    torch.testing.assert_close(L.TverskyLoss(alpha, beta)(x, y, 9.0), expected)
    if alpha == beta == 0.5:
        torch.testing.assert_close(L.DiceLoss()(x, y, 9.0), expected)


CLS_LOSSES = [
    L.SigmoidCrossEntropyLoss(),
    L.SigmoidCrossEntropyLoss(0.75),
    L.FocalLoss(),
    L.FocalStarLoss(),
    L.Poly1Loss(),
    L.Poly1Loss(None, 0.0, 1.0),
    L.QualityFocalLoss(),
    L.VarifocalLoss(),
    L.GHMCLoss(momentum=0.0),
    L.DiceLoss(),
    L.TverskyLoss(),
    L.OHEMLoss(batch_size_per_image=6, neg_pos_ratio=3.0, nms_thresh=None),
]


def call_cls(loss, x, y, normalizer=2.0):
    if getattr(loss, "needs_anchors", False):
        return loss(
            x, y, normalizer, image_index=torch.arange(len(x)) % 2, anchors=torch.zeros(len(x), 4, dtype=x.dtype)
        )
    return loss(x, y, normalizer)


@pytest.mark.parametrize("loss", CLS_LOSSES, ids=lambda loss: type(loss).__name__)
def test_classification_gradcheck(loss):
    x, y = cls_inputs(m=8, k=3, seed=5)
    x = x.clamp(-5, 5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: call_cls(loss, z, y), (x,))


FUSED_LOSSES = [
    L.SigmoidCrossEntropyLoss(),
    L.SigmoidCrossEntropyLoss(0.75),
    L.FocalLoss(),
    L.FocalLoss(None, 0.5),
    L.FocalLoss(0.25, 5.0),
    L.FocalStarLoss(),
    L.FocalStarLoss(4.0, 0.0),
    L.GHMCLoss(),
    L.GHMCLoss(10, 0.0),
    L.Poly1Loss(),
    L.Poly1Loss(None, 0.0, -1.0),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("loss", FUSED_LOSSES, ids=lambda loss: f"{type(loss).__name__}{vars(loss).get('gamma', '')}")
def test_fused_value_and_gradient_equal_autograd_of_the_elementwise_terms(loss, dtype):
    """The forward computes Σ loss and its gradient in one pass; autograd through `elementwise`
    (GHM-C: the weights of the update the forward just made) must give the same."""
    x, y = cls_inputs(m=200, k=4, seed=3)
    x, y = x.to(dtype).requires_grad_(True), y.to(dtype)
    loss = loss.to(dtype)
    fused = loss(x, y, 3.0)
    (fused_gradient,) = torch.autograd.grad(fused, x)
    if isinstance(loss, L.GHMCLoss):
        reference = loss.elementwise(x, y, update=False).sum() / x.numel()
    else:
        reference = loss.elementwise(x, y).sum() / 3.0
    (reference_gradient,) = torch.autograd.grad(reference, x)
    tolerance = {"rtol": 1e-12, "atol": 1e-14} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-7}
    torch.testing.assert_close(fused, reference, **tolerance)
    assert torch.isfinite(fused_gradient).all()
    finite = torch.isfinite(reference_gradient)  # autograd of (1 − p_t)^γ, γ < 1, is 0 · ∞ where p_t rounds to 1
    assert finite.all() or (dtype == torch.float32 and getattr(loss, "gamma", 1) < 1)
    torch.testing.assert_close(fused_gradient[finite], reference_gradient[finite], **tolerance)
    assert fused_gradient.abs().max() > 0


@pytest.mark.parametrize(
    "loss",
    [L.FocalLoss(), L.SigmoidCrossEntropyLoss(0.75), L.FocalStarLoss(), L.GHMCLoss(30, 0.0)],
    ids=lambda loss: type(loss).__name__,
)
def test_fused_float32_sum_over_two_million_elements_stays_accurate(loss):
    """A float32 dot product accumulates 2 M terms with a relative drift of ~1e-5; sum() does not."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(25_000, 80, generator=g) * 3 - 4
    y = (torch.rand(25_000, 80, generator=g) < 0.01).float()
    value, exact = loss(x, y, 1.0).item(), loss.double()(x.double(), y.double(), 1.0).item()
    assert abs(value - exact) <= 2e-6 * abs(exact)


def test_fused_focal_gradient_is_zero_not_nan_where_p_t_rounds_to_one():
    x = torch.tensor([[30.0, -30.0]], requires_grad=True)
    L.FocalLoss(None, 0.5)(x, torch.tensor([[1.0, 0.0]]), 1.0).backward()
    assert x.grad.abs().max() < 1e-12


@pytest.mark.parametrize("loss", CLS_LOSSES, ids=lambda loss: type(loss).__name__)
def test_classification_degenerate_inputs(loss):
    for m in (0, 5):  # all anchors ignored (M = 0), and no positives at all
        x = torch.randn(m, 4, requires_grad=True)
        value = call_cls(loss, x, torch.zeros(m, 4), normalizer=1.0)
        value.backward()
        assert torch.isfinite(value) and (x.grad is None or torch.isfinite(x.grad).all())
        if m == 0:
            assert value.item() == 0.0


# ----------------------------------------------------------------------------- box regression on deltas
def delta_inputs(p=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(p, 4, generator=g, dtype=torch.float64), torch.randn(p, 4, generator=g, dtype=torch.float64)


def test_l1_l2_huber_balanced_l1_formulas():
    pred, target = delta_inputs()
    d = pred - target
    torch.testing.assert_close(L.L1Loss()(pred, target, 3.0), d.abs().sum() / 3)
    torch.testing.assert_close(L.L2Loss()(pred, target, 3.0), (d**2).sum() / 3)
    for delta in (0.5, 1.0, 2.0):
        huber = torch.where(d.abs() <= delta, 0.5 * d**2, delta * (d.abs() - 0.5 * delta)).sum() / 3
        torch.testing.assert_close(L.HuberLoss(delta)(pred, target, 3.0), huber)
        torch.testing.assert_close(huber, delta * L.SmoothL1Loss(beta=delta)(pred, target, 3.0))
        torch.testing.assert_close(huber * 3, F.huber_loss(pred, target, delta=delta, reduction="sum"))
    # Libra R-CNN, written out with its own constants: b from α ln(b + 1) = γ, C from continuity at β
    a, gam, beta = 0.5, 1.5, 1.0
    b = math.exp(gam / a) - 1
    x = d.abs()
    inner = a / b * (b * x + 1) * torch.log(b * x / beta + 1) - a * x
    outer = gam * x + gam / b - a * beta
    torch.testing.assert_close(
        L.BalancedL1Loss(a, gam, beta)(pred, target, 3.0), torch.where(x < beta, inner, outer).sum() / 3
    )
    near = torch.tensor([[beta - 1e-9]], dtype=torch.float64)  # continuous at β
    assert (
        abs(
            L.BalancedL1Loss()(near, torch.zeros(1, 1, dtype=torch.float64), 1.0).item()
            - (gam * beta + gam / b - a * beta)
        )
        < 1e-6
    )


@pytest.mark.parametrize("bins,momentum,mu", [(10, 0.7, 0.02), (3, 0.0, 0.5)])
def test_ghm_r_matches_official_loop(bins, momentum, mu):
    loss = L.GHMRLoss(mu, bins, momentum).double()
    acc = [0.0] * bins
    for seed in range(3):
        pred, target = delta_inputs(seed=seed)
        d = pred - target
        asl1 = torch.sqrt(d * d + mu * mu) - mu
        g = (d / torch.sqrt(d * d + mu * mu)).abs()
        expected = ghm_reference(d, g, bins, momentum, acc, 1e3, asl1)
        torch.testing.assert_close(loss(pred, target, None), expected, rtol=1e-10, atol=1e-12)


def test_asl1_tends_to_l1():
    pred, target = delta_inputs()
    tiny = L.GHMRLoss(mu=1e-8, bins=1, momentum=0.0).double()
    torch.testing.assert_close(tiny(pred, target, None), (pred - target).abs().mean(), rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- IoU family on boxes
def box_inputs(p=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(p, 2, generator=g, dtype=torch.float64) * 100
    wh = torch.rand(p, 2, generator=g, dtype=torch.float64) * 60 + 1
    target = torch.cat([xy, xy + wh], 1)
    pred = target + torch.randn(p, 4, generator=g, dtype=torch.float64) * 8
    pred = torch.cat([torch.minimum(pred[:, :2], pred[:, 2:] - 0.5), pred[:, 2:]], 1)
    pred[0] = torch.tensor([500.0, 500.0, 510.0, 520.0])  # no overlap at all
    target[1] = torch.tensor([10.0, 10.0, 10.0, 30.0])  # degenerate ground truth (zero width)
    pred[2] = target[2]  # a perfect prediction
    return pred, target


def iou_family_reference(b, t, kind, gamma=0.5, lam=1.0):
    """Per-box Python-float formulas from the papers."""
    x1, y1, x2, y2 = b
    u1, v1, u2, v2 = t
    w, h, wg, hg = x2 - x1, y2 - y1, u2 - u1, v2 - v1
    iw = max(0.0, min(x2, u2) - max(x1, u1))
    ih = max(0.0, min(y2, v2) - max(y1, v1))
    inter = iw * ih
    union = w * h + wg * hg - inter
    iou = inter / (union + 1e-7)
    cw, ch = max(x2, u2) - min(x1, u1), max(y2, v2) - min(y1, v1)
    c2 = cw**2 + ch**2 + 1e-7
    rho2 = ((x1 + x2) / 2 - (u1 + u2) / 2) ** 2 + ((y1 + y2) / 2 - (v1 + v2) / 2) ** 2
    if kind == "iou":
        return -math.log(max(iou, 1e-7))
    if kind == "iou_linear":
        return 1 - iou
    if kind == "giou":
        return 1 - iou + (cw * ch + 1e-7 - union) / (cw * ch + 1e-7)
    if kind == "diou":
        return 1 - iou + rho2 / c2
    if kind == "ciou":
        v = 4 / math.pi**2 * (math.atan(wg / (hg + 1e-7)) - math.atan(w / (h + 1e-7))) ** 2
        return 1 - iou + rho2 / c2 + v / (1 - iou + v + 1e-7) * v
    eiou = 1 - iou + rho2 / c2 + (w - wg) ** 2 / (cw**2 + 1e-7) + (h - hg) ** 2 / (ch**2 + 1e-7)
    if kind == "eiou":
        return eiou
    if kind == "focal_eiou":
        return iou**gamma * eiou
    corners = [
        math.dist((x1, y1), (u1, v1)),
        math.dist((x2, y1), (u2, v1)),
        math.dist((x2, y2), (u2, v2)),
        math.dist((x1, y2), (u1, v2)),
    ]
    return 1 - iou + lam * sum(corners) / (4 * math.sqrt(c2))


IOU_LOSSES = {
    "iou": L.IoULoss(),
    "iou_linear": L.IoULoss("linear"),
    "giou": L.GIoULoss(),
    "diou": L.DIoULoss(),
    "ciou": L.CIoULoss(),
    "eiou": L.EIoULoss(),
    "focal_eiou": L.FocalEIoULoss(),
    "cdiou": L.CDIoULoss(),
}


@pytest.mark.parametrize("kind", list(IOU_LOSSES))
def test_iou_family_matches_per_box_formula(kind):
    pred, target = box_inputs()
    expected = sum(iou_family_reference(b.tolist(), t.tolist(), kind) for b, t in zip(pred, target)) / 4.0
    value = IOU_LOSSES[kind](pred, target, 4.0)
    torch.testing.assert_close(value, torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=1e-6)
    assert IOU_LOSSES[kind].input_space == "xyxy"


@pytest.mark.parametrize(
    "kind,library",
    [
        ("giou", tvops.generalized_box_iou_loss),
        ("diou", tvops.distance_box_iou_loss),
        ("ciou", tvops.complete_box_iou_loss),
    ],
)
def test_iou_family_matches_torchvision(kind, library):
    pred, target = box_inputs()
    keep = torch.ones(len(pred), dtype=torch.bool)
    keep[1] = False  # torchvision divides by the zero height of the degenerate box's atan argument
    pred, target = pred[keep], target[keep]
    torch.testing.assert_close(
        IOU_LOSSES[kind](pred, target, 1.0), library(pred, target, reduction="sum"), rtol=1e-6, atol=1e-5
    )


def newer_iou_reference(b, t, kind, alpha=3.0, theta=4.0, image=(200.0, 300.0)):
    """Alpha-IoU, SIoU (the paper's arcsin form, the smaller angle), Wise-IoU v1 and MPDIoU per box,
    from the papers, in Python floats."""
    x1, y1, x2, y2 = b
    u1, v1, u2, v2 = t
    w, h, wg, hg = x2 - x1, y2 - y1, u2 - u1, v2 - v1
    inter = max(0.0, min(x2, u2) - max(x1, u1)) * max(0.0, min(y2, v2) - max(y1, v1))
    union = w * h + wg * hg - inter
    iou = inter / (union + 1e-7)
    cw, ch = max(x2, u2) - min(x1, u1), max(y2, v2) - min(y1, v1)
    dx, dy = (x1 + x2 - u1 - u2) / 2, (y1 + y2 - v1 - v2) / 2
    rho2, c2 = dx * dx + dy * dy, cw * cw + ch * ch
    power = lambda x: max(x, 1e-7) ** alpha
    if kind.startswith("alpha_"):
        loss = 1 - power(iou)
        if kind == "alpha_giou":
            loss += power((cw * ch - union) / (cw * ch))
        if kind in ("alpha_diou", "alpha_ciou"):
            loss += power(rho2 / c2)
        if kind == "alpha_ciou":
            v = 4 / math.pi**2 * (math.atan(wg / (hg + 1e-7)) - math.atan(w / (h + 1e-7))) ** 2
            loss += power(v / (1 - iou + v) * v)
        return loss
    if kind == "siou":
        sigma = math.sqrt(rho2)
        sine = abs(dy) / sigma if sigma > 0 else 0.0
        if sine > math.sqrt(2) / 2:  # minimise the angle to the other axis
            sine = abs(dx) / sigma
        angle = 1 - 2 * math.sin(math.asin(sine) - math.pi / 4) ** 2
        gamma = 2 - angle
        distance = sum(1 - math.exp(-gamma * r) for r in ((dx / cw) ** 2, (dy / ch) ** 2))
        shape = sum((1 - math.exp(-abs(a - g) / max(a, g))) ** theta for a, g in ((w, wg), (h, hg)))
        return 1 - iou + (distance + shape) / 2
    if kind == "wiou1":
        return math.exp(rho2 / c2) * (1 - iou)
    d1, d2 = (x1 - u1) ** 2 + (y1 - v1) ** 2, (x2 - u2) ** 2 + (y2 - v2) ** 2
    return 1 - (iou - d1 / (image[0] ** 2 + image[1] ** 2) - d2 / (image[0] ** 2 + image[1] ** 2))


NEWER_IOU_LOSSES = {
    "alpha_iou": L.AlphaIoULoss(),
    "alpha_giou": L.AlphaIoULoss(base="giou"),
    "alpha_diou": L.AlphaIoULoss(base="diou"),
    "alpha_ciou": L.AlphaIoULoss(base="ciou"),
    "siou": L.SIoULoss(),
    "wiou1": L.WiseIoULoss(version=1),
    "mpdiou": L.MPDIoULoss(),
}


def call_box_loss(loss, pred, target, normalizer, image=(200.0, 300.0)):
    if getattr(loss, "needs_image_size", False):
        return loss(pred, target, normalizer, image_size=torch.tensor([image], dtype=pred.dtype).expand(len(pred), 2))
    return loss(pred, target, normalizer)


@pytest.mark.parametrize("kind", list(NEWER_IOU_LOSSES))
def test_newer_iou_losses_match_their_papers(kind):
    """Non-overlapping, degenerate (zero-width ground truth) and perfect pairs included (box_inputs)."""
    pred, target = box_inputs()
    expected = sum(newer_iou_reference(b.tolist(), t.tolist(), kind) for b, t in zip(pred, target)) / 4.0
    value = call_box_loss(NEWER_IOU_LOSSES[kind], pred, target, 4.0)
    torch.testing.assert_close(value, torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=1e-6)


def test_alpha_one_is_the_plain_loss():
    pred, target = box_inputs()
    pred, target = pred[3:], target[3:]
    for base, plain in (
        ("iou", L.IoULoss("linear")),
        ("giou", L.GIoULoss()),
        ("diou", L.DIoULoss()),
        ("ciou", L.CIoULoss()),
    ):
        torch.testing.assert_close(
            L.AlphaIoULoss(1.0, base)(pred, target, 1.0), plain(pred, target, 1.0), rtol=1e-6, atol=1e-6
        )


def test_wise_iou_v3_follows_its_running_mean_over_batches_and_resumes_bit_identically():
    """m starts at 1 and moves by μ = 0.5 towards each batch's mean 1 − IoU before β is taken:
    loss = Σ β/(δ a^(β − δ)) · exp(ρ²/c²) · (1 − IoU), β = (1 − IoU)/m; evaluation leaves m alone."""
    loss = L.WiseIoULoss(version=3, a=1.9, delta=3.0, momentum=0.5).double()
    mean = 1.0
    values = []
    for seed in range(3):
        pred, target = box_inputs(p=12, seed=seed)
        iou_loss = torch.tensor(
            [iou_family_reference(b.tolist(), t.tolist(), "iou_linear") for b, t in zip(pred, target)],
            dtype=torch.float64,
        )  # 1 − IoU
        v1 = torch.tensor(
            [newer_iou_reference(b.tolist(), t.tolist(), "wiou1") for b, t in zip(pred, target)], dtype=torch.float64
        )
        mean = 0.5 * mean + 0.5 * float(iou_loss.mean())
        beta = iou_loss / mean
        expected = (beta / (3.0 * 1.9 ** (beta - 3.0)) * v1).sum() / 2.0
        values.append(loss(pred, target, 2.0))
        torch.testing.assert_close(values[-1], expected, rtol=1e-9, atol=1e-9)
        assert loss.iou_loss_mean.item() == pytest.approx(mean, rel=1e-12)
        if seed == 0:
            resumed = L.WiseIoULoss(version=3, momentum=0.5).double()
            resumed.load_state_dict(loss.state_dict())
    pred, target = box_inputs(p=12, seed=1)
    assert torch.equal(resumed(pred, target, 2.0), values[1])  # the checkpointed state continues exactly
    loss.eval()
    state = loss.iou_loss_mean.clone()
    loss(pred, target, 2.0)
    assert torch.equal(loss.iou_loss_mean, state)


def gradient_at(pred, fn):
    """∂ Σ fn(p) / ∂p at p = pred."""
    p = pred.clone().requires_grad_(True)
    fn(p).sum().backward()
    return p.grad


def test_newer_iou_weights_without_gradient():
    """Wise-IoU's denominators (c², and v3's factor r) and α-CIoU's β carry no gradient: the
    gradients equal those of the formulas with these parts held constant."""
    pred, target = box_inputs(p=8, seed=4)
    pred, target = pred[3:], target[3:]
    grad = functools.partial(gradient_at, pred)

    geo = lambda p: iou_module.box_geometry(p, target)
    c2 = geo(pred).enclosing_w ** 2 + geo(pred).enclosing_h ** 2 + iou_module.EPS
    v1 = lambda p: torch.exp(geo(p).center_dist2 / c2) * (1 - geo(p).iou)
    torch.testing.assert_close(grad(lambda p: L.WiseIoULoss(version=1)(p, target, 1.0)), grad(v1))
    v3 = L.WiseIoULoss(version=3).double()
    v3.eval()
    beta = (1 - geo(pred).iou) / v3.iou_loss_mean
    r = beta / (v3.delta * v3.a ** (beta - v3.delta))
    torch.testing.assert_close(grad(lambda p: v3(p, target, 1.0)), grad(lambda p: r * v1(p)))

    def v_of(p):
        g = geo(p)
        return 4 / math.pi**2 * (torch.atan(g.w_gt / (g.h_gt + 1e-7)) - torch.atan(g.w / (g.h + 1e-7))) ** 2

    b = v_of(pred) / (1 - geo(pred).iou + v_of(pred) + 1e-7)
    expected = grad(lambda p: L.AlphaIoULoss(3.0, "diou")(p, target, 1.0) + ((b * v_of(p)).clamp(min=1e-7) ** 3).sum())
    torch.testing.assert_close(grad(lambda p: L.AlphaIoULoss(3.0, "ciou")(p, target, 1.0)), expected)


BOX_LOSSES = [
    L.SmoothL1Loss(),
    L.L1Loss(),
    L.L2Loss(),
    L.HuberLoss(),
    L.BalancedL1Loss(),
    L.GHMRLoss(momentum=0.0),
    *IOU_LOSSES.values(),
    *NEWER_IOU_LOSSES.values(),
    L.WiseIoULoss(version=3),
]


@pytest.mark.parametrize("loss", BOX_LOSSES, ids=lambda loss: type(loss).__name__ + getattr(loss, "mode", ""))
def test_box_gradcheck_and_empty_input(loss):
    empty = torch.zeros(0, 4, requires_grad=True)
    value = call_box_loss(loss, empty, torch.zeros(0, 4), 1.0)
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(empty.grad).all()
    if isinstance(loss, (L.CIoULoss, L.FocalEIoULoss, L.WiseIoULoss)) or getattr(loss, "base", None) == "ciou":
        return  # a weight without gradient by design: see test_weights_without_gradient and its newer twin
    if loss.input_space == "xyxy":
        pred, target = box_inputs(p=6, seed=2)
        pred, target = pred[3:], target[3:]  # overlapping, non-degenerate pairs: the losses are smooth there
    else:
        pred, target = delta_inputs(p=6, seed=2)
    pred.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: call_box_loss(loss, p, target, 2.0), (pred,))


def test_weights_without_gradient():
    """Focal-EIoU's IoU^γ and CIoU's α carry no gradient: d(IoU^γ·EIoU) = IoU^γ·dEIoU and
    d(CIoU) = d(DIoU) + α·dv, with v written out here."""
    pred, target = box_inputs(p=8, seed=4)
    pred, target = pred[3:], target[3:]
    grad = functools.partial(gradient_at, pred)

    iou = torch.tensor(
        [1 - iou_family_reference(b.tolist(), t.tolist(), "iou_linear") for b, t in zip(pred, target)],
        dtype=torch.float64,
    )
    per_box_eiou = lambda p: torch.stack([L.EIoULoss()(p[i : i + 1], target[i : i + 1], 1.0) for i in range(len(p))])
    eiou_grad = grad(lambda p: per_box_eiou(p) * iou**0.5)
    torch.testing.assert_close(grad(lambda p: L.FocalEIoULoss(0.5)(p, target, 1.0)), eiou_grad)

    def v_of(p):
        w, h = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
        wg, hg = target[:, 2] - target[:, 0], target[:, 3] - target[:, 1]
        return 4 / math.pi**2 * (torch.atan(wg / (hg + 1e-7)) - torch.atan(w / (h + 1e-7))) ** 2

    v = v_of(pred)
    alpha = v / (1 - iou + v + 1e-7)
    expected = grad(lambda p: L.DIoULoss()(p, target, 1.0) + (alpha * v_of(p)).sum())
    torch.testing.assert_close(grad(lambda p: L.CIoULoss()(p, target, 1.0)), expected)


def test_degenerate_boxes_give_finite_gradients():
    pred, target = box_inputs()
    for name, loss in {**IOU_LOSSES, **NEWER_IOU_LOSSES, "wiou3": L.WiseIoULoss(version=3)}.items():
        p = pred.float().clone().requires_grad_(True)
        value = call_box_loss(loss, p, target.float(), 1.0)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(p.grad).all(), name


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "build,message",
    [
        (lambda: L.FocalStarLoss(gamma=0.0), "gamma must be > 0"),
        (lambda: L.FocalStarLoss(alpha=-0.1), r"alpha must be in \[0, 1\]"),
        (lambda: L.SigmoidCrossEntropyLoss(alpha=2.0), r"alpha must be in \[0, 1\]"),
        (lambda: L.GHMCLoss(bins=0), "bins must be >= 1"),
        (lambda: L.GHMCLoss(momentum=1.0), r"momentum must be in \[0, 1\)"),
        (lambda: L.GHMRLoss(mu=0.0), "mu must be > 0"),
        (lambda: L.GHMRLoss(bins=0), "bins must be >= 1"),
        (lambda: L.OHEMLoss(batch_size_per_image=0), "batch_size_per_image must be >= 1"),
        (lambda: L.HuberLoss(delta=0.0), "delta must be > 0"),
        (lambda: L.BalancedL1Loss(alpha=0.0), "must be > 0"),
        (lambda: L.IoULoss(mode="sqrt"), "mode must be"),
        (lambda: L.FocalEIoULoss(gamma=-1.0), "gamma must be >= 0"),
        (lambda: L.EqualizedFocalLoss(gamma=0.0), "gamma must be > 0 for EFL"),
        (lambda: L.EqualizedFocalLoss(scale=-1.0), "scale must be >= 0"),
        (lambda: L.AlphaIoULoss(alpha=0.0), "alpha must be > 0"),
        (lambda: L.AlphaIoULoss(base="eiou"), r"base must be one of \['iou', 'giou', 'diou', 'ciou'\]"),
        (lambda: L.SIoULoss(theta=0.0), "theta must be > 0"),
        (lambda: L.WiseIoULoss(version=2), "version must be 1 or 3"),
        (lambda: L.TverskyLoss(alpha=-1.0), "alpha >= 0"),
    ],
)
def test_invalid_hyperparameters_raise(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_log1p_exp_is_accurate_to_float32_rounding_where_log_of_one_plus_u_is_not():
    from detector.losses.fused import log1p_exp

    z = torch.linspace(-80, 80, 400_001)
    exact = F.softplus(z.double(), threshold=1000)
    assert ((log1p_exp(z).double() - exact).abs() / exact).max() < 3e-7
    assert ((log1p_exp(z.double()) - exact).abs() / exact).max() < 1e-14
    assert log1p_exp(torch.tensor([-17.0])).item() == pytest.approx(math.exp(-17.0), rel=1e-6)  # 1 + u rounds to 1


def test_ghm_bin_index_on_and_next_to_every_edge_equals_bucketize():
    """⌊g·bins⌋ alone disagrees with the edge comparisons next to some edges (bins 11, 12, 20, …)."""
    from detector.losses.ghm import bin_index

    for bins, last_edge in [(20, 1 + 1e-6), (12, 1e3), (11, 1 + 1e-6), (30, 1 + 1e-6), (10, 1e3)]:
        edges = torch.arange(bins + 1, dtype=torch.float32) / bins
        edges[-1] = last_edge
        values, up, down = [edges[:-1]], edges[:-1], edges[:-1]
        for _ in range(16):  # 16 floats either side of every edge
            up, down = torch.nextafter(up, torch.tensor(2.0)), torch.nextafter(down, torch.tensor(-1.0)).clamp(min=0)
            values += [up, down]
        g = torch.cat([*values, torch.tensor([1.0, 0.9999999, 1 + 1e-6, 5.0])])
        expected = (torch.bucketize(g, edges, right=True) - 1).clamp(0, bins - 1)
        assert torch.equal(bin_index(g, edges), expected)
        if bins in (20, 12, 11):
            assert not torch.equal((g * bins).long().clamp(0, bins - 1), expected)  # the test can fail
