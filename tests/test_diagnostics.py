"""Gradient diagnostics against the closed-form gradients of CE and FL, in float64."""

import numpy as np
import pytest
import torch

from detector.engine.diagnostics import EASY_NEGATIVE_P, gradient_statistics
from detector.losses import FocalLoss, GHMCLoss, OHEMLoss, SigmoidCrossEntropyLoss


def batch(seed=0, m=400, k=5):
    """Mostly confident negatives with a few hard ones, and positives of every difficulty."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(m, k, generator=generator, dtype=torch.float64) * 2.5 - 4.0
    targets = torch.zeros(m, k, dtype=torch.float64)
    targets[torch.arange(0, m, 10), torch.randint(0, k, (m // 10,), generator=generator)] = 1.0
    logits = torch.where(targets.bool(), torch.randn(m, k, generator=generator, dtype=torch.float64) * 2, logits)
    return logits, targets


def statistics(loss, logits, targets, normalizer=7.0, bins=50):
    logits = logits.clone().requires_grad_(True)
    value = loss(logits, targets, normalizer)
    return gradient_statistics(value, logits, targets, loss, bins=bins), value, logits


def closed_form_focal(logits, targets, alpha, gamma):
    """FL terms and |dFL/dx| written out (FL paper Appendix B), y ∈ {0, 1}, p = σ(x)."""
    p = torch.sigmoid(logits)
    positive = targets == 1
    loss = torch.where(positive, -alpha * (1 - p) ** gamma * torch.log(p), -(1 - alpha) * p**gamma * torch.log1p(-p))
    grad_pos = alpha * (gamma * p * (1 - p) ** gamma * -torch.log(p) + (1 - p) ** (gamma + 1))
    grad_neg = (1 - alpha) * (gamma * p**gamma * (1 - p) * -torch.log1p(-p) + p ** (gamma + 1))
    return loss, torch.where(positive, grad_pos, grad_neg)


@pytest.mark.parametrize("alpha,gamma", [(0.5, 0.0), (0.25, 2.0), (0.75, 0.5)])
def test_easy_negative_shares_match_the_closed_form(alpha, gamma):
    logits, targets = batch()
    stats, _, _ = statistics(FocalLoss(alpha=alpha, gamma=gamma), logits, targets)
    loss, gradient = closed_form_focal(logits, targets, alpha, gamma)
    easy = (targets == 0) & (torch.sigmoid(logits) < EASY_NEGATIVE_P)
    assert 0.3 < easy.double().mean() < 0.99  # the batch has both easy and hard negatives
    assert stats.scalars["easy_negative_fraction"] == pytest.approx(float(easy.double().mean()), abs=1e-12)
    assert stats.scalars["easy_negative_loss_share"] == pytest.approx(float(loss[easy].sum() / loss.sum()), rel=1e-9)
    assert stats.scalars["easy_negative_gradient_share"] == pytest.approx(
        float(gradient[easy].sum() / gradient.sum()), rel=1e-9
    )


def test_histograms_match_numpy_and_the_gradient_mass_is_complete():
    logits, targets = batch(seed=1)
    stats, _, _ = statistics(SigmoidCrossEntropyLoss(), logits, targets, bins=20)
    g = (torch.sigmoid(logits) - targets).abs().numpy()
    positive = targets.numpy() == 1
    edges = np.linspace(0, 1, 21)
    np.testing.assert_array_equal(stats.g_positive.counts.numpy(), np.histogram(g[positive], edges)[0])
    np.testing.assert_array_equal(stats.g_negative.counts.numpy(), np.histogram(g[~positive], edges)[0])
    assert stats.g_positive.total == positive.sum() and stats.g_negative.total == (~positive).sum()
    assert stats.g_negative.sum == pytest.approx(g[~positive].sum()) and stats.g_negative.max == pytest.approx(
        g[~positive].max()
    )
    assert stats.g_positive.bucket_limits() == pytest.approx(list(edges[1:]))
    # CE's gradient is (p − y) / normalizer: its mass per g-bin is Σ g / 7 over the bin
    expected = np.histogram(g, edges, weights=g / 7.0)[0]
    np.testing.assert_allclose(stats.gradient_by_g.counts.numpy(), expected, rtol=1e-9)
    assert stats.gradient_by_g.total == pytest.approx(g.sum() / 7.0)


def test_focal_loss_moves_the_gradient_off_easy_negatives():
    logits, targets = batch(seed=2)
    ce, _, _ = statistics(SigmoidCrossEntropyLoss(), logits, targets)
    fl, _, _ = statistics(FocalLoss(alpha=0.25, gamma=2.0), logits, targets)
    assert ce.scalars["easy_negative_gradient_share"] > 2 * fl.scalars["easy_negative_gradient_share"]
    assert ce.scalars["easy_negative_loss_share"] > 2 * fl.scalars["easy_negative_loss_share"]


def test_the_graph_survives_for_the_training_backward():
    logits, targets = batch(seed=3)
    loss = FocalLoss()
    _, value, leaf = statistics(loss, logits, targets)
    value.backward()  # would raise if gradient_statistics had freed the graph
    reference = logits.clone().requires_grad_(True)
    loss(reference, targets, 7.0).backward()
    torch.testing.assert_close(leaf.grad, reference.grad, rtol=0, atol=0)


def test_ghm_c_terms_are_the_forward_weights_and_leave_the_ema_alone():
    logits, targets = batch(seed=4)
    loss = GHMCLoss(bins=10, momentum=0.75)
    loss(logits, targets)  # a first update, so that the EMA is not this batch's counts alone
    value = loss(logits * 0.9, targets)
    state = loss.acc_sum.clone()
    terms = loss.elementwise(logits * 0.9, targets)
    torch.testing.assert_close(terms.sum() / terms.numel(), value, rtol=1e-12, atol=0)
    torch.testing.assert_close(loss.acc_sum, state, rtol=0, atol=0)


def test_losses_that_are_not_a_sum_report_the_gradient_share_only():
    logits, targets = batch(seed=5, m=60)
    loss = OHEMLoss(batch_size_per_image=16, nms_thresh=None)
    leaf = logits.clone().requires_grad_(True)
    anchors = torch.rand(60, 2, dtype=torch.float64).repeat(1, 2) * 100 + torch.tensor([0, 0, 10, 10])
    value = loss(leaf, targets, 3.0, image_index=torch.zeros(60, dtype=torch.long), anchors=anchors)
    stats = gradient_statistics(value, leaf, targets, loss)
    assert set(stats.scalars) == {"easy_negative_fraction", "easy_negative_gradient_share"}
    assert 0.0 <= stats.scalars["easy_negative_gradient_share"] < 1.0
