"""Loss and gradient curves of the classification losses, written as PNG files.

    python scripts/plot_losses.py [--out docs/figures]

focal_loss_vs_pt.png     FL paper Figure 1: CE and FL (γ ∈ {0.5, 1, 2, 5}) against p_t
focal_star.png           FL paper Appendix A/B: loss and dL/dx against x_t for CE, FL, FL*
ghm_gradient_norm.png    GHM paper's view: density of the gradient norm g = |p − y| for a typical
                         anchor population, and each loss's total gradient contribution per g
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from detector.losses import FocalLoss, FocalStarLoss, GHMCLoss, SigmoidCrossEntropyLoss  # noqa: E402


def per_element(loss, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and dL/dx of a positive example (y = 1) at logits x_t, one value per element."""
    x = x_t.clone().requires_grad_(True)
    values = torch.stack([loss(x[i : i + 1, None], torch.ones(1, 1, dtype=x.dtype), 1.0) for i in range(len(x))])
    values.sum().backward()
    return values.detach(), x.grad


def plot_focal_vs_pt(out: Path) -> Path:
    p_t = torch.linspace(0.001, 1.0, 400, dtype=torch.float64)
    x_t = torch.logit(p_t.clamp(max=1 - 1e-9))
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for gamma in (0.0, 0.5, 1.0, 2.0, 5.0):
        loss, _ = per_element(FocalLoss(alpha=None, gamma=gamma), x_t)
        ax.plot(p_t, loss, label=f"γ = {gamma:g}" + (" (CE)" if gamma == 0 else ""))
    ax.axvspan(0.6, 1.0, color="0.92", zorder=0)
    ax.text(0.8, 4.3, "well-classified\nexamples", ha="center")
    ax.set(
        xlabel="probability of ground truth class p_t",
        ylabel="loss",
        ylim=(0, 5),
        xlim=(0, 1),
        title="Focal Loss: FL(p_t) = −(1 − p_t)^γ log(p_t)",
    )
    ax.legend()
    return _save(fig, out / "focal_loss_vs_pt.png")


def plot_focal_star(out: Path) -> Path:
    x_t = torch.linspace(-10, 10, 400, dtype=torch.float64)
    settings = [
        ("CE", SigmoidCrossEntropyLoss()),
        ("FL γ=2", FocalLoss(alpha=None, gamma=2.0)),
        ("FL* γ=2 β=1", FocalStarLoss(2.0, 1.0, None)),
        ("FL* γ=4 β=0", FocalStarLoss(4.0, 0.0, None)),
    ]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, loss in settings:
        value, grad = per_element(loss, x_t)
        left.plot(x_t, value, label=name)
        right.plot(x_t, grad, label=name)
    left.set(xlabel="x_t", ylabel="loss", ylim=(0, 5), title="loss against x_t = y·x (FL paper, Fig. 5)")
    right.set(xlabel="x_t", ylabel="dL/dx", title="gradient (FL paper, Appendix B, Fig. 6)")
    left.legend()
    right.legend()
    return _save(fig, out / "focal_star.png")


def plot_ghm(out: Path, seed: int = 0) -> Path:
    """A dense-detector anchor population: mostly easy negatives, a few positives and hard cases."""
    g = torch.Generator().manual_seed(seed)
    negatives = torch.randn(200_000, generator=g, dtype=torch.float64) * 1.5 - 6.0
    positives = torch.randn(2_000, generator=g, dtype=torch.float64) * 2.0 + 1.0
    logits = torch.cat([negatives, positives]).view(-1, 1)
    targets = torch.cat([torch.zeros(len(negatives)), torch.ones(len(positives))]).double().view(-1, 1)
    norm = (torch.sigmoid(logits) - targets).abs().view(-1)
    bins = torch.linspace(0, 1, 31, dtype=torch.float64)
    which = torch.bucketize(norm, bins, right=True).clamp(1, 30) - 1
    centers = (bins[:-1] + bins[1:]) / 2
    density = torch.bincount(which, minlength=30).double()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.bar(centers, density / density.sum(), width=1 / 30, log=True)
    left.set(
        xlabel="gradient norm g = |p − y|",
        ylabel="fraction of examples (log)",
        title="gradient norm density (GHM paper, Fig. 1 left)",
    )
    for name, loss in [
        ("CE", SigmoidCrossEntropyLoss()),
        ("FL γ=2", FocalLoss(alpha=None, gamma=2.0)),
        ("GHM-C", GHMCLoss(bins=30, momentum=0.0)),
    ]:
        x = logits.clone().requires_grad_(True)
        loss(x, targets, 1.0).backward()
        per_bin = torch.bincount(which, weights=x.grad.abs().view(-1), minlength=30)
        right.plot(centers, per_bin / per_bin.sum(), marker="o", label=name)
    right.set(
        xlabel="gradient norm g",
        ylabel="share of the total gradient",
        yscale="log",
        title="where the gradient comes from (GHM paper, Fig. 1 right)",
    )
    right.legend()
    return _save(fig, out / "ghm_gradient_norm.png")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/figures", help="folder for the PNG files")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = [plot_focal_vs_pt(out), plot_focal_star(out), plot_ghm(out)]
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
