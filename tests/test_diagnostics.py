"""Gradient diagnostics against the closed-form gradients of CE, FL, Smooth L1 and ASL1, in float64."""

import numpy as np
import pytest
import torch

from detector.engine.diagnostics import ASL1_MU, EASY_NEGATIVE_P, box_gradient_statistics, gradient_statistics
from detector.losses import FocalLoss, GHMCLoss, GHMRLoss, OHEMLoss, SigmoidCrossEntropyLoss, SmoothL1Loss


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


def residuals(seed=6, p=120):
    """Target deltas and predictions whose residuals span precise (|d| ≪ μ) to outlying (|d| ≈ 1)."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randn(p, 4, generator=generator, dtype=torch.float64) * 0.3
    scale = torch.logspace(-3.5, 0, p, dtype=torch.float64).unsqueeze(1)
    return targets + torch.randn(p, 4, generator=generator, dtype=torch.float64) * scale, targets


def box_statistics(loss, predictions, targets, normalizer=5.0, bins=20):
    leaf = predictions.clone().requires_grad_(True)
    value = loss(leaf, targets, normalizer)
    return box_gradient_statistics(value, leaf, targets, bins=bins), value, leaf


def test_box_histograms_match_smooth_l1s_closed_form_gradient():
    predictions, targets = residuals()
    stats, _, _ = box_statistics(SmoothL1Loss(beta=0.11), predictions, targets)
    d = (predictions - targets).abs().numpy().ravel()
    g = d / np.sqrt(d * d + ASL1_MU**2)
    assert (g < 0.5).sum() > 20 and (g > 0.95).sum() > 100  # both ends of the axis are populated
    edges = np.linspace(0, 1, 21)
    np.testing.assert_array_equal(stats.g.counts.numpy(), np.histogram(g, edges)[0])
    assert stats.g.total == d.size == 480
    # |∂SL1/∂d| = min(|d| / β, 1), divided by the normalizer
    expected = np.histogram(g, edges, weights=np.minimum(d / 0.11, 1.0) / 5.0)[0]
    np.testing.assert_allclose(stats.gradient_by_g.counts.numpy(), expected, rtol=1e-9)
    assert stats.scalars["box_mean_abs_residual"] == pytest.approx(d.mean(), rel=1e-12)


def test_asl1s_gradient_is_the_axis_itself_and_per_level_chunks_join():
    predictions, targets = residuals(seed=7)
    loss = GHMRLoss(mu=ASL1_MU, bins=1, momentum=0.0)  # ASL1: every weight 1, Σ ASL1 / 4P per call
    leaves = [predictions[:50].clone().requires_grad_(True), predictions[50:].clone().requires_grad_(True)]
    value = loss(leaves[0], targets[:50]) + loss(leaves[1], targets[50:])
    stats = box_gradient_statistics(value, leaves, [targets[:50], targets[50:]], bins=20)
    d = (predictions - targets).abs().numpy()
    g = d / np.sqrt(d * d + ASL1_MU**2)
    per_coordinate = np.concatenate([g[:50].ravel() / 200.0, g[50:].ravel() / 280.0])  # ∂ASL1/∂d = g_r, over 4P
    expected = np.histogram(g.ravel(), np.linspace(0, 1, 21), weights=per_coordinate)[0]
    np.testing.assert_allclose(stats.gradient_by_g.counts.numpy(), expected, rtol=1e-9)
    value.backward()  # the graph survives for the training step
    assert leaves[0].grad is not None and leaves[1].grad is not None


def test_ghm_r_moves_box_gradient_off_the_crowded_bins():
    predictions, targets = residuals(seed=8)
    asl1, _, _ = box_statistics(GHMRLoss(bins=1, momentum=0.0), predictions, targets)
    ghm_r, _, _ = box_statistics(GHMRLoss(bins=10, momentum=0.0), predictions, targets)
    last = slice(-2, None)  # g_r ≥ 0.9, where most residuals lie

    def share(stats):
        return float(stats.gradient_by_g.counts[last].sum() / stats.gradient_by_g.total)

    assert share(ghm_r) < share(asl1) - 0.2


def test_a_batch_without_positives_gives_no_box_statistics_and_huge_residuals_stay_far():
    empty = torch.zeros(0, 4, dtype=torch.float64, requires_grad=True)
    value = SmoothL1Loss()(empty, torch.zeros(0, 4, dtype=torch.float64), 1.0)
    assert box_gradient_statistics(value, empty, torch.zeros(0, 4, dtype=torch.float64)) is None
    huge = torch.tensor([[1e20, -1e20, 3e-4, 0.0]], requires_grad=True)  # float32: d² overflows
    stats = box_gradient_statistics(SmoothL1Loss()(huge, torch.zeros(1, 4), 1.0), huge, torch.zeros(1, 4), bins=10)
    assert stats.g.counts.tolist() == [2.0, 0, 0, 0, 0, 0, 0, 0, 0, 2.0]  # 3e-4 and 0 near 0; ±1e20 at g_r = 1
