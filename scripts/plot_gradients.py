"""Draw the gradient diagnostics of one or more training runs into one PNG (GHM paper, Fig. 1 view).

    python scripts/plot_gradients.py RUN_DIR [RUN_DIR ...] [--out gradients.png] [--average 3] [--labels A B ...]

Reads the `gradients/*` histograms and scalars that training writes to each run's `tb/`
(`trainer.diagnostics_period`) and draws, one line per run: the density of g = |p − y| over
negative and over positive elements, the share of the loss's gradient |∂L/∂x| falling at each g,
and the easy-negative share of the gradient during training. Runs whose box loss works on deltas
add a third row: the density of g_r = |d| / √(d² + μ²) over the positives' box coordinates (GHM-R's
axis) and the share of the box loss's gradient at each g_r. Histograms are averaged over the last
`--average` logged iterations. Prints the final easy-negative shares, and the box figures, as
markdown tables. Runs are labelled by the overrides in which they differ (e.g. `+row/fl_table3=ce`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    HISTOGRAMS,
    SCALARS,
    EventAccumulator,
)

from detector.tools.ablation_table import row_labels  # noqa: E402

HISTOGRAM_TAGS = ("gradients/g_negative", "gradients/g_positive", "gradients/gradient_by_g")
BOX_HISTOGRAM_TAGS = ("gradients/box_g", "gradients/box_gradient_by_g")
SHARE_TAGS = (
    "gradients/easy_negative_fraction",
    "gradients/easy_negative_loss_share",
    "gradients/easy_negative_gradient_share",
)
BOX_SCALAR_TAG = "gradients/box_mean_abs_residual"
FAR_G = 0.9  # g_r ≥ 0.9: |d| ≥ 0.041, past about 2μ
NEAR_G = 0.7  # g_r < 0.7: |d| < 0.0196, within about μ


def read_run(run_dir: Path, average: int) -> dict:
    """{"densities": {tag: (bin centres, normalised counts)}, "scalars": {tag: (steps, values)}}."""
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={HISTOGRAMS: 0, SCALARS: 0})
    events.Reload()
    tags = events.Tags()
    if HISTOGRAM_TAGS[0] not in tags["histograms"]:
        raise SystemExit(f"{run_dir / 'tb'} has no gradient diagnostics; train with trainer.diagnostics_period > 0")
    densities = {}
    for tag in (*HISTOGRAM_TAGS, *(t for t in BOX_HISTOGRAM_TAGS if t in tags["histograms"])):
        logged = [h for h in events.Histograms(tag) if sum(h.histogram_value.bucket) > 0]  # a step without positives
        recent = logged[-average:]
        if not recent:
            continue
        limits = np.asarray(recent[-1].histogram_value.bucket_limit)
        counts = [np.asarray(h.histogram_value.bucket, dtype=float) for h in recent]
        mean = np.mean([c / c.sum() for c in counts], axis=0)
        centres = limits - limits[0] / 2  # equal bins: the first limit is the width
        densities[tag] = (centres, mean)
    scalars = {
        tag: ([e.step for e in events.Scalars(tag)], [e.value for e in events.Scalars(tag)])
        for tag in (*SHARE_TAGS, BOX_SCALAR_TAG)
        if tag in tags["scalars"]
    }
    return {"densities": densities, "scalars": scalars}


def labels_for(run_dirs: list[Path]) -> list[str]:
    jobs = []
    for run_dir in run_dirs:
        overrides_file = run_dir / ".hydra" / "overrides.yaml"
        overrides = list(OmegaConf.load(overrides_file)) if overrides_file.is_file() else [run_dir.name]
        jobs.append({"overrides": overrides})
    return row_labels(jobs)


def plot(runs: list[tuple[str, dict]], out: Path) -> None:
    with_box = any(BOX_HISTOGRAM_TAGS[0] in run["densities"] for _, run in runs)
    fig, axes = plt.subplots(3 if with_box else 2, 2, figsize=(11, 12 if with_box else 8))
    axis_g = "gradient norm g = |p − y|"
    panels = [
        (axes[0, 0], "gradients/g_negative", "negative elements: density of g", axis_g),
        (axes[0, 1], "gradients/g_positive", "positive elements: density of g", axis_g),
        (axes[1, 0], "gradients/gradient_by_g", "share of the loss's gradient |∂L/∂x| at g", axis_g),
    ]
    if with_box:
        axis_r = "box residual's g_r = |d| / √(d² + μ²), μ = 0.02"
        panels += [
            (axes[2, 0], "gradients/box_g", "positives' box coordinates: density of g_r", axis_r),
            (axes[2, 1], "gradients/box_gradient_by_g", "share of the box loss's gradient |∂L/∂d| at g_r", axis_r),
        ]
    for ax, tag, title, xlabel in panels:
        for label, run in runs:
            if tag not in run["densities"]:
                continue
            centres, density = run["densities"][tag]
            ax.plot(centres, np.where(density > 0, density, np.nan), marker=".", label=label)
        ax.set(yscale="log", xlabel=xlabel, xlim=(0, 1), title=title)
    ax = axes[1, 1]
    for label, run in runs:
        steps, values = run["scalars"].get("gradients/easy_negative_gradient_share", ([], []))
        ax.plot(steps, values, label=label)
    ax.set(xlabel="iteration", ylim=(0, 1), title="easy negatives' (p < 0.1) share of the gradient")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def share_table(runs: list[tuple[str, dict]]) -> str:
    header = "| run | easy negatives (of elements) | their share of the loss | their share of the gradient |"
    lines = [header, "|---|---|---|---|"]
    for label, run in runs:
        cells = []
        for tag in SHARE_TAGS:
            values = run["scalars"].get(tag, ([], []))[1]
            cells.append(f"{100 * values[-1]:.1f} %" if values else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def box_table(runs: list[tuple[str, dict]], average: int) -> str:
    """Per run with box diagnostics: the mean |d| of the positives' coordinates, the shares of them
    at g_r < 0.7 and at g_r ≥ 0.9, and the latter's share of the box gradient, each averaged over the
    last `average` logged steps (the histograms as drawn)."""
    lines = [
        f"| run | mean abs residual | coordinates at g_r < {NEAR_G} | at g_r ≥ {FAR_G} | "
        "their share of the box gradient |",
        "|---|---|---|---|---|",
    ]
    for label, run in runs:
        if BOX_HISTOGRAM_TAGS[0] not in run["densities"]:
            continue
        residuals = [v for v in run["scalars"].get(BOX_SCALAR_TAG, ([], []))[1] if v > 0][-average:]
        cells = [f"{np.mean(residuals):.4f}" if residuals else "–"]
        centres, counts = run["densities"][BOX_HISTOGRAM_TAGS[0]]
        _, gradient = run["densities"][BOX_HISTOGRAM_TAGS[1]]  # the same bins
        lower_edges = centres - (1 - centres[-1])  # the last bin ends at 1: half a width is 1 − its centre
        near, far = lower_edges < NEAR_G - 1e-9, lower_edges >= FAR_G - 1e-9
        cells += [f"{100 * share:.1f} %" for share in (counts[near].sum(), counts[far].sum(), gradient[far].sum())]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (each with a tb/ subfolder)")
    parser.add_argument("--out", type=Path, default=Path("gradients.png"))
    parser.add_argument("--average", type=int, default=3, help="average the last N logged histograms")
    parser.add_argument("--labels", nargs="+", help="one legend label per run (default: the overrides that differ)")
    args = parser.parse_args()
    if args.average < 1:
        parser.error("--average must be >= 1")
    if args.labels and len(args.labels) != len(args.runs):
        parser.error(f"--labels needs one label per run: {len(args.runs)} runs, {len(args.labels)} labels")
    labels = args.labels or labels_for(args.runs)
    runs = [(label, read_run(run_dir, args.average)) for label, run_dir in zip(labels, args.runs)]
    plot(runs, args.out)
    print(share_table(runs))
    box = box_table(runs, args.average)
    if box:
        print(f"\n{box}")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
