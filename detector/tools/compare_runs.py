"""Compare runs side by side: one Markdown report with pictures, from run directories or a multirun.

    detector compare-runs RUN_OR_MULTIRUN [RUN_OR_MULTIRUN ...] [--baseline ROW] [--out DIR]

Each argument is a run directory (it holds `.hydra/`) or a multirun directory (its job folders are
read as `ablation_table.py` reads them). Runs whose overrides differ only in the seed form one row;
the values of a row are the mean over its finished seeds, and a failed or diverged run stays
visible in its row's runs column. `--baseline` names the row the deltas are taken against (the
first row by default). Writes into `--out` (default: the first argument's `report/`):

- `report.md`: the COCO table with ΔAP against the baseline; the per-class AP of every row as Δ
  against the baseline, classes sorted by their number of ground-truth boxes (the most frequent
  first); the easy-negative shares of the gradient diagnostics (the last logged value); the AP50
  that fixing each kind of error would gain (`detector.engine.errors`); links to
- `pr_curves.png`: precision against recall at IoU .5, every row overlaid (`metrics.json` pr_curves);
- `losses.png`: the training loss (`train/loss`, TensorBoard events) of every row overlaid;
- `errors.png`: the TIDE error breakdown of every row (`metrics.json` errors), side by side;
- `eval_ap.png`: AP at each evaluation during training (`eval/AP`, the mean over the finished runs; for
  a row with none, its first run's progress), every row, with its table in the report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

from detector.engine.errors import KINDS
from detector.tools.ablation_table import METRICS, find_jobs, read_job, row_labels, runs_column

SHARES = ("easy_negative_fraction", "easy_negative_gradient_share", "easy_negative_loss_share")


def collect_jobs(paths: list[Path]) -> list[dict]:
    jobs = []
    for path in paths:
        if not path.is_dir():
            raise SystemExit(f"{path}: no such directory")
        jobs += [read_job(path)] if (path / ".hydra").is_dir() else find_jobs(path)
    if not jobs:
        raise SystemExit(f"no runs in {', '.join(map(str, paths))}: give run directories (with .hydra/) or multiruns")
    return jobs


def scalars(job: dict, prefix: str) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of the job's TensorBoard scalars whose tag starts with `prefix`."""
    events = EventAccumulator(str(job["dir"] / "tb"), size_guidance={SCALARS: 0})
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)]
        for tag in events.Tags().get("scalars", [])
        if tag.startswith(prefix)
    }


def build_rows(jobs: list[dict]) -> list[dict]:
    groups: dict[str, list[dict]] = {}
    for job, label in zip(jobs, row_labels(jobs, ignore=("seed",))):
        groups.setdefault(label, []).append(job)
    rows = []
    for label, members in groups.items():
        finished = [job for job in members if job["status"] == "ok"]
        row = {"row": label, "runs": runs_column(members), "jobs": members, "finished": finished}
        for metric in METRICS:
            values = [float(job["metrics"][metric]) for job in finished]
            row[metric] = float(np.mean(values)) if values else None
        per_class: dict[str, list[float]] = {}
        boxes: dict[str, int] = {}
        for job in finished:
            for entry in job["metrics"].get("per_class", []):
                per_class.setdefault(entry["class"], []).append(entry["AP"])
                boxes[entry["class"]] = entry["gt_boxes"]
        row["per_class"] = {name: float(np.mean(values)) for name, values in per_class.items()}
        row["gt_boxes"] = boxes
        curves = [job["metrics"]["pr_curves"] for job in finished if "pr_curves" in job["metrics"]]
        row["pr_curve"] = (
            (curves[0]["recall"], np.mean([c["AP50"] for c in curves], axis=0).tolist()) if curves else None
        )
        events = {job["dir"]: scalars(job, "") for job in members if (job["dir"] / "tb").is_dir()}  # read once
        logged = list(events.values())
        row["shares"] = {
            name: float(np.mean([tags[f"gradients/{name}"][-1][1] for tags in logged if f"gradients/{name}" in tags]))
            for name in SHARES
            if any(f"gradients/{name}" in tags for tags in logged)
        }
        row["loss_curves"] = [tags["train/loss"] for tags in logged if "train/loss" in tags]
        evaluations: dict[int, list[float]] = {}
        for job in finished if finished else members[:1]:  # a row that never finished: its first run's progress
            for step, value in dict(events.get(job["dir"], {}).get("eval/AP", [])).items():  # a resumed repeat: last
                evaluations.setdefault(step, []).append(value)
        row["eval_ap"] = {step: float(np.mean(values)) for step, values in sorted(evaluations.items())}
        breakdowns = [job["metrics"]["errors"] for job in finished if "errors" in job["metrics"]]
        row["errors"] = (
            {kind: float(np.mean([b["dAP"][kind] for b in breakdowns])) for kind in KINDS} if breakdowns else {}
        )
        rows.append(row)
    return rows


def _number(value, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def markdown(rows: list[dict], baseline: dict, pictures: list[str]) -> str:
    lines = [f"# Runs compared (baseline: {baseline['row']})", ""]
    lines += ["| row | runs | " + " | ".join(METRICS) + " | ΔAP |", "|---" * (len(METRICS) + 3) + "|"]
    for row in rows:
        delta = row["AP"] - baseline["AP"] if row["AP"] is not None and baseline["AP"] is not None else None
        cells = [_number(row[m]) for m in METRICS]
        lines.append(f"| {row['row']} | {row['runs']} | " + " | ".join(cells) + f" | {_number(delta, True)} |")
    classes = sorted(baseline["gt_boxes"], key=lambda name: (-baseline["gt_boxes"][name], name))
    others = [row for row in rows if row is not baseline]
    if classes and others:
        lines += ["", "## Per-class AP against the baseline (the most frequent class first)", ""]
        lines += ["| class | boxes | baseline AP | " + " | ".join(f"Δ {row['row']}" for row in others) + " |"]
        lines.append("|---" * (3 + len(others)) + "|")
        for name in classes:
            base = baseline["per_class"].get(name)
            deltas = [
                _number(row["per_class"][name] - base, True) if name in row["per_class"] and base is not None else "–"
                for row in others
            ]
            lines.append(f"| {name} | {baseline['gt_boxes'][name]} | {_number(base)} | " + " | ".join(deltas) + " |")
    if any(row["shares"] for row in rows):
        lines += ["", "## Where the classification gradient goes (last diagnostics step, mean over runs)", ""]
        lines += ["| row | " + " | ".join(SHARES) + " |", "|---" * (len(SHARES) + 1) + "|"]
        for row in rows:
            lines.append(f"| {row['row']} | " + " | ".join(_number(row["shares"].get(s)) for s in SHARES) + " |")
    steps = sorted({step for row in rows for step in row["eval_ap"]})
    if len(steps) > 1:
        title = "## AP at each evaluation (TensorBoard eval/AP, mean over the finished runs; else the first run)"
        lines += ["", title, ""]
        lines += ["| row | " + " | ".join(f"it {step}" for step in steps) + " |", "|---" * (len(steps) + 1) + "|"]
        for row in rows:
            lines.append(f"| {row['row']} | " + " | ".join(_number(row["eval_ap"].get(s)) for s in steps) + " |")
    if any(row["errors"] for row in rows):
        lines += ["", "## AP50 gained by fixing each kind of error (TIDE; mean over runs)", ""]
        lines += ["| row | " + " | ".join(KINDS) + " |", "|---" * (len(KINDS) + 1) + "|"]
        for row in rows:
            lines.append(f"| {row['row']} | " + " | ".join(_number(row["errors"].get(k)) for k in KINDS) + " |")
    lines += ["", "## Pictures", ""] + [f"![{name}]({name})" for name in pictures]
    return "\n".join(lines) + "\n"


def draw(rows: list[dict], out: Path) -> list[str]:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return []
    written = []
    figure = Figure(figsize=(6, 4), layout="tight")
    axes = figure.subplots()
    for row in rows:
        if row["pr_curve"] is not None:
            axes.plot(*row["pr_curve"], label=row["row"])
    if axes.lines:
        axes.set(xlabel="recall", ylabel="precision at IoU .5 (%)", xlim=(0, 1), ylim=(0, 100))
        axes.legend(fontsize=7)
        figure.savefig(out / "pr_curves.png", dpi=110)
        written.append("pr_curves.png")
    figure = Figure(figsize=(6, 4), layout="tight")
    axes = figure.subplots()
    for row in rows:
        for index, curve in enumerate(row["loss_curves"]):
            steps, values = zip(*curve)
            axes.plot(steps, values, color=f"C{rows.index(row)}", alpha=0.8, label=row["row"] if index == 0 else None)
    if axes.lines:
        axes.set(xlabel="iteration", ylabel="training loss", yscale="log")
        axes.legend(fontsize=7)
        figure.savefig(out / "losses.png", dpi=110)
        written.append("losses.png")
    if sum(len(row["eval_ap"]) for row in rows) > 1:
        figure = Figure(figsize=(6, 4), layout="tight")
        axes = figure.subplots()
        for row in rows:
            if row["eval_ap"]:
                axes.plot(list(row["eval_ap"]), list(row["eval_ap"].values()), "o-", label=row["row"])
        axes.set(xlabel="iteration", ylabel="AP (%)")
        axes.legend(fontsize=7)
        figure.savefig(out / "eval_ap.png", dpi=110)
        written.append("eval_ap.png")
    kinds = [row for row in rows if row["errors"]]
    if kinds:
        figure = Figure(figsize=(6, 4), layout="tight")
        axes = figure.subplots()
        width = 0.8 / len(kinds)
        for index, row in enumerate(kinds):
            positions = np.arange(len(KINDS)) + (index - (len(kinds) - 1) / 2) * width
            axes.bar(positions, [row["errors"][k] for k in KINDS], width, label=row["row"])
        axes.set(xticks=np.arange(len(KINDS)), xticklabels=KINDS, ylabel="AP50 gained if fixed")
        axes.legend(fontsize=7)
        figure.savefig(out / "errors.png", dpi=110)
        written.append("errors.png")
    return written


def main(argv: list[str] | None = None, prog: str | None = None) -> str:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", type=Path, nargs="+", help="run directories or multirun directories")
    parser.add_argument("--baseline", help="the row the deltas are taken against (default: the first)")
    parser.add_argument("--out", type=Path, help="default: the first argument's report/")
    args = parser.parse_args(argv)
    rows = build_rows(collect_jobs(args.runs))
    names = [row["row"] for row in rows]
    if args.baseline is not None and args.baseline not in names:
        raise SystemExit(f"--baseline {args.baseline!r} is not a row; the rows are: {names}")
    baseline = rows[names.index(args.baseline)] if args.baseline else rows[0]
    out = args.out or args.runs[0] / "report"
    out.mkdir(parents=True, exist_ok=True)
    report = markdown(rows, baseline, draw(rows, out))
    (out / "report.md").write_text(report)
    print(report)
    return report


if __name__ == "__main__":
    main()
