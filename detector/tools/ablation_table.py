"""Turn a finished Hydra multirun (a stored sweep) into a table, with the paper's numbers beside ours.

    detector ablation-table MULTIRUN_DIR [--paper docs/paper_tables.yaml] [--no-picture]

MULTIRUN_DIR is a multirun, or a folder of runs started one at a time (`python train.py
+row/fl_table3=ce seed=0 hydra.run.dir=DIR/ce_s0`, a row a session). Reads every job folder's
`.hydra/` (overrides, config, the sweep it belongs to: its `sweep=` choice or its `+row/SWEEP=`
group) and `metrics.json`. Jobs that differ only in their seed form one row: each metric is shown as
mean ± sample std over the seeds that finished, and the row's runs column counts them. A run copied
in from another sweep joins the row whose resolved configuration (`.hydra/config.yaml`, the seed
aside) is the same as its own, so that a row two of the papers' tables share (GHM-C + Smooth L1) is
trained once; the table lists every such run under its row. A job
that did not finish stays visible there: "diverged" if its metrics.json says so, "unfinished" if
it has a checkpoint and no metrics.json (stopped or still running; `trainer.resume=auto` continues
it), "failed" otherwise. A row with two finished runs of one seed is refused: they are not two samples.

When the sweep is one of the papers' tables, the rows come in the paper's order (rows it does not
have after them) and the published AP of the matching row stands beside ours, with the Spearman
rank correlation ρ between our mean AP and the paper's, and its 95 % bootstrap interval: each
row's seeds are resampled with replacement (2,000 times, a fixed generator). Pairs of rows whose AP
differs by less than the noise (Welch's t-test, p ≥ 0.05; rows with one seed cannot be told apart
from noise) are listed.

A per-seed table follows: each run's final AP with the AP of every evaluation its `train.log` holds,
the CPU kind (or GPU) and precision it ran with, and how many classes reached 10 AP and how many
stayed below 1 (from `metrics.json`), or its status; rows of one table may mix machines, and this is
where it shows.

Writes into MULTIRUN_DIR: `table.md` (printed too), `table.csv` (a line per row), `runs.csv`
(a line per job) and `table.png` (our AP with ± std bars beside the paper's, row by row).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from scipy.stats import spearmanr, ttest_ind

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
EVALUATION = re.compile(r"evaluation at iteration (\d+):")
COCO_AP = re.compile(
    r"Average Precision\s+\(AP\) @\[ IoU=0\.50:0\.95 \| area=\s*all \| maxDets=\s*100 \] = (-?\d+\.\d+)"
)
DEFAULT_PAPER = Path(__file__).resolve().parents[2] / "docs" / "paper_tables.yaml"


def read_job(job_dir: Path) -> dict:
    """A job folder's overrides, config, sweep, metrics and status: ok, diverged, unfinished (a
    checkpoint but no metrics.json) or failed. A job killed before Hydra wrote all of `.hydra/` is
    kept as failed, under the overrides it has (or its folder name)."""
    hydra_dir = job_dir / ".hydra"

    def load(name: str):
        return OmegaConf.load(hydra_dir / name) if (hydra_dir / name).is_file() else None

    saved = load("overrides.yaml")
    overrides = None if saved is None else list(saved)
    hydra = load("hydra.yaml")
    config = load("config.yaml") or OmegaConf.from_dotlist([o.lstrip("+") for o in overrides or []])
    job = {
        "dir": job_dir,
        "overrides": overrides,
        "config": config,
        "resolved": (hydra_dir / "config.yaml").is_file(),
        "sweep": None if hydra is None else sweep_of(hydra.hydra.runtime.choices),
        "metrics": None,
        "status": "failed",
    }
    metrics_file = job_dir / "metrics.json"
    if metrics_file.is_file():
        job["metrics"] = json.loads(metrics_file.read_text())
        diverged = job["metrics"].get("status") == "diverged"
        job["status"] = "diverged" if diverged else "ok" if "AP" in job["metrics"] else "failed"
    elif (job_dir / "checkpoints" / "last.pt").is_file():  # stopped mid-way; trainer.resume=auto continues it
        job["status"] = "unfinished"
    return job


def ap_curve(log: str) -> dict[int, float]:
    """{iteration: AP in percent} of every evaluation in a run's train.log: the first line of the COCO
    summary that follows each "evaluation at iteration N:". A resumed run that evaluated an iteration
    twice keeps the later value."""
    pieces = EVALUATION.split(log)
    curve = {}
    for iteration, text in zip(pieces[1::2], pieces[2::2]):
        found = COCO_AP.search(text)
        if found:
            curve[int(iteration)] = 100 * float(found.group(1))
    return curve


def sweep_of(choices) -> str | None:
    """The stored sweep a job belongs to: its `sweep=` choice, or for a row run on its own
    (`+row/fl_table3=ce`, the sweeps' row groups are named after them) the row's group."""
    if choices.get("sweep"):
        return choices["sweep"]
    rows = [group.split("/", 1)[1] for group in choices if group.startswith("row/")]
    return rows[0] if len(rows) == 1 else None


def find_jobs(multirun_dir: Path) -> list[dict]:
    """Every job folder: one with a `.hydra/` folder, or named by its job number."""
    folders = [p for p in multirun_dir.iterdir() if p.is_dir() and ((p / ".hydra").is_dir() or p.name.isdigit())]
    folders.sort(key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))
    return [read_job(folder) for folder in folders]


def row_labels(jobs: list[dict], ignore: tuple[str, ...] = ()) -> list[str]:
    """The overrides that differ between jobs (the swept ones), or all of them for a single job;
    overrides of the keys in `ignore` (e.g. the seed) are left out. A job without overrides.yaml
    is named by its folder."""
    kept = [
        None
        if job["overrides"] is None
        else [o for o in job["overrides"] if o.split("=", 1)[0].lstrip("+") not in ignore]
        for job in jobs
    ]
    known = [set(k) for k in kept if k is not None]
    shared = set.intersection(*known) if len(known) > 1 else set()
    return [
        f"job {job['dir'].name} (no .hydra/overrides.yaml)"
        if k is None
        else " ".join(o for o in k if o not in shared) or "(defaults)"
        for job, k in zip(jobs, kept)
    ]


def _same(value, expected) -> bool:
    if isinstance(expected, list):
        return isinstance(value, list) and len(value) == len(expected) and all(map(_same, value, expected))
    if isinstance(expected, float) or isinstance(value, float):
        return value is not None and expected is not None and math.isclose(float(value), float(expected), rel_tol=1e-6)
    return value == expected


def paper_row(job: dict, table: dict) -> dict | None:
    """The first of the paper's rows whose `match`, with the table's own (the settings its rows share),
    the job's configuration has; None if none."""
    for row in table["rows"]:
        match = {**table.get("match", {}), **row["match"]}
        if all(_same(_plain(OmegaConf.select(job["config"], key)), value) for key, value in match.items()):
            return row
    return None


def _plain(value):
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def build_table(multirun_dir: Path, paper_file: Path = DEFAULT_PAPER) -> tuple[str, list[dict], list[dict]]:
    """(markdown, one dict per row, one dict per job)."""
    jobs = find_jobs(multirun_dir)
    if not jobs:
        raise SystemExit(f"{multirun_dir}: no job folders (numbered, or with .hydra/); is this a multirun directory?")
    sweeps = [job["sweep"] for job in jobs if job["sweep"]]
    sweep = max(sweeps, key=sweeps.count) if sweeps else None  # the most jobs'; a tie: the first job's
    tables = OmegaConf.to_container(OmegaConf.load(paper_file)) if paper_file.is_file() else {}
    table = tables.get(sweep) if sweep else None
    groups: dict[str, list[dict]] = {}
    runs = []
    for job, label in zip(jobs, labels_with_borrowed_runs(jobs, sweep)):
        groups.setdefault(label, []).append(job)
        metrics = job["metrics"] or {}
        runs.append(
            {
                "row": label,
                "seed": job["config"].get("seed"),
                "status": job["status"],
                **{m: metrics.get(m) for m in METRICS},
                "iterations": metrics.get("iteration"),
                "train_seconds": metrics.get("train_seconds"),
                "dir": job["dir"].name,
                "sweep": job["sweep"],
            }
        )
    for label, members in groups.items():
        refuse_repeated_seeds(label, members)
    rows = [_row(label, members, table, sweep) for label, members in groups.items()]
    if table is not None:  # the paper's order; rows it does not have after them, in the jobs' order
        rows.sort(key=lambda row: len(table["rows"]) if row["paper_index"] is None else row["paper_index"])
    return _markdown(multirun_dir, sweep, table, rows), rows, runs


def labels_with_borrowed_runs(jobs: list[dict], sweep: str | None) -> list[str]:
    """Each job's row label. The jobs of `sweep` (and those of no known sweep) are labelled among
    themselves; a job of another sweep whose resolved configuration, the seed aside, is that of one of
    them takes its label, and any other job is labelled among all jobs."""
    own = [i for i, job in enumerate(jobs) if job["sweep"] in (sweep, None)]
    if len(own) == len(jobs):
        return row_labels(jobs, ignore=("seed",))
    labels = row_labels(jobs, ignore=("seed",))
    for i, label in zip(own, row_labels([jobs[i] for i in own], ignore=("seed",))):
        labels[i] = label
    label_of = {configuration(jobs[i]): labels[i] for i in own if jobs[i]["resolved"]}
    for i, job in enumerate(jobs):
        if i not in own and job["resolved"]:
            labels[i] = label_of.get(configuration(job), labels[i])
    return labels


def configuration(job: dict) -> str:
    """A job's resolved configuration without its seed, as canonical JSON."""
    config = OmegaConf.to_container(job["config"])
    config.pop("seed", None)
    return json.dumps(config, sort_keys=True, default=str)


def refuse_repeated_seeds(label: str, jobs: list[dict]) -> None:
    """Two finished runs of one row with the same seed are not two samples of the seed's spread
    (a rerun on another machine, or a copied folder); counted as such they would shrink the std and
    inflate n. An unfinished or failed run beside a finished one of its seed is kept: it is a
    visible attempt, not a sample."""
    folders: dict = {}
    for job in jobs:
        if job["status"] == "ok":
            folders.setdefault(job["config"].get("seed"), []).append(job["dir"].name)
    repeated = {seed: names for seed, names in folders.items() if len(names) > 1}
    if repeated:
        seed, names = next(iter(repeated.items()))
        raise SystemExit(
            f"row {label!r}: seed {seed} finished in {len(names)} job folders ({', '.join(names)}); "
            "a row takes one run per seed. Move the repeats out of this directory (or rerun them "
            "with another seed=) and tabulate again."
        )


def _row(label: str, jobs: list[dict], table: dict | None, sweep: str | None) -> dict:
    finished = [job for job in jobs if job["status"] == "ok"]
    row = {
        "row": label,
        "runs": runs_column(jobs),
        "n": len(finished),
        "seeds": " ".join(str(job["config"].get("seed")) for job in jobs),
        "borrowed": [f"{job['dir'].name} ({job['sweep']})" for job in jobs if job["sweep"] not in (sweep, None)],
    }
    for metric in METRICS:
        values = [float(job["metrics"][metric]) for job in finished]
        row[metric] = float(np.mean(values)) if values else None
        row[f"{metric}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
    row["AP_values"] = [float(job["metrics"]["AP"]) for job in finished]
    row["per_seed"] = {}
    for job in jobs:
        row["per_seed"].setdefault(job["config"].get("seed"), []).append(seed_cell(job))
    row["iterations"] = _single([job["metrics"].get("iteration") for job in finished])
    seconds = [
        job["metrics"].get("train_seconds") for job in finished if job["metrics"].get("train_seconds") is not None
    ]
    row["train_seconds"] = float(np.mean(seconds)) if seconds else None
    if table is not None:
        published = paper_row(next((job for job in jobs if job["resolved"]), jobs[0]), table)  # a full config
        row["paper_AP"] = published["AP"] if published else None
        row["paper_index"] = table["rows"].index(published) if published else None
    return row


def seed_cell(job: dict) -> str:
    """A run in the per-seed table: "0.87 (0.3 · 0.5 · 0.8 · 0.9); AMX, bf16; 1 / 66 of 80" (final AP,
    the AP at each evaluation when there were several; where and in what precision it ran; classes at
    ≥ 10 AP / < 1 AP of those evaluated), or its status ("diverged at iteration 7")."""
    metrics = job["metrics"] or {}
    if job["status"] != "ok":
        return job["status"] + (f" at iteration {metrics['iteration']}" if metrics.get("iteration") else "")
    log = job["dir"] / "train.log"
    curve = ap_curve(log.read_text()) if log.is_file() else {}
    parts = [f"{float(metrics['AP']):.2f}"]
    if len(curve) > 1:
        parts[0] += " (" + " · ".join(f"{curve[i]:.1f}" for i in sorted(curve)) + ")"
    machine, precision = metrics.get("machine") or {}, metrics.get("precision") or {}
    ran_on = [machine.get("cuda") or machine.get("cpu_kind"), precision.get("used")]
    if any(ran_on):
        parts.append(", ".join(filter(None, ran_on)))
    classes = [c["AP"] for c in metrics.get("per_class") or [] if c.get("AP") is not None and c["AP"] >= 0]
    if classes:
        parts.append(f"{sum(ap >= 10 for ap in classes)} / {sum(ap < 1 for ap in classes)} of {len(classes)}")
    return "; ".join(parts)


def runs_column(jobs: list[dict]) -> str:
    """ "3 ok", or "2 ok, 1 diverged (seed 2)": every run that did not finish stays visible, as
    diverged, unfinished (a checkpoint and no metrics: resumable) or failed."""
    parts = [f"{sum(job['status'] == 'ok' for job in jobs)} ok"]
    for status in ("diverged", "unfinished", "failed"):
        seeds = [str(job["config"].get("seed")) for job in jobs if job["status"] == status]
        if seeds:
            parts.append(f"{len(seeds)} {status} (seed {', '.join(seeds)})")
    return ", ".join(parts)


def _single(values: list):
    distinct = sorted(set(v for v in values if v is not None))
    return distinct[0] if len(distinct) == 1 else ("/".join(map(str, distinct)) if distinct else None)


def spearman_with_interval(
    rows: list[dict], resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float, int] | None:
    """(ρ of the mean APs against the paper's, 2.5 and 97.5 percentiles of ρ over bootstrap resamples
    of each row's seeds, number of rows), over the rows with a finished run and a paper value;
    None below 3 such rows. A resample whose means tie everywhere has no ρ and is left out."""
    rows = [r for r in rows if r["n"] and r.get("paper_AP") is not None]
    if len(rows) < 3:
        return None
    paper = [r["paper_AP"] for r in rows]
    rho = float(spearmanr([r["AP"] for r in rows], paper).statistic)
    generator = np.random.default_rng(seed)
    samples = []
    for _ in range(resamples):
        means = [float(np.mean(generator.choice(r["AP_values"], size=len(r["AP_values"])))) for r in rows]
        value = spearmanr(means, paper).statistic
        if np.isfinite(value):
            samples.append(value)
    low, high = np.percentile(samples, [2.5, 97.5]) if samples else (math.nan, math.nan)
    return rho, float(low), float(high), len(rows)


def pairs_within_noise(rows: list[dict], alpha: float = 0.05) -> tuple[list[tuple[str, str, float]], list[str]]:
    """([(row a, row b, p)] for the pairs whose AP Welch's t-test cannot separate, p ≥ alpha;
    [rows with fewer than 2 finished seeds, which no test can separate from noise])."""
    testable = [r for r in rows if r["n"] >= 2]
    close = []
    for i, a in enumerate(testable):
        for b in testable[i + 1 :]:
            if np.std(a["AP_values"]) == 0 and np.std(b["AP_values"]) == 0:
                p = 1.0 if a["AP"] == b["AP"] else 0.0
            else:
                p = float(ttest_ind(a["AP_values"], b["AP_values"], equal_var=False).pvalue)
            if p >= alpha:
                close.append((a["row"], b["row"], p))
    return close, [r["row"] for r in rows if r["n"] < 2]


def _markdown(multirun_dir: Path, sweep: str | None, table: dict | None, rows: list[dict]) -> str:
    columns = ["row", "runs", *METRICS, "iterations", "train_seconds"] + (["paper_AP"] if table else [])
    lines = [f"# {sweep or 'multirun'}: {multirun_dir}", ""]
    if table:
        lines += [f"Paper: {table['source']}", ""]
    lines += ["Metrics: mean ± sample std over the seeds that finished (the runs column counts them).", ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [_metric(row, c) if c in METRICS else _cell(row.get(c)) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    if table:
        result = spearman_with_interval(rows)
        if result is None:
            finished = sum(1 for r in rows if r["n"] and r.get("paper_AP") is not None)
            lines += [
                "",
                f"Spearman rank correlation: needs at least 3 finished rows with a paper value, has {finished}",
            ]
        else:
            rho, low, high, count = result
            interval = (
                f"95 % bootstrap interval over seeds [{low:.3f}, {high:.3f}]"
                if any(r["n"] > 1 for r in rows)
                else "no interval: one seed a row"
            )
            lines += [
                "",
                f"Spearman rank correlation of the mean AP with the paper's AP over {count} rows: ρ = {rho:.3f}, "
                + interval,
            ]
    borrowed = [f"{row['row']}: {', '.join(row['borrowed'])}" for row in rows if row["borrowed"]]
    if borrowed:
        lines += [
            "",
            "Runs from another sweep, in the row with their resolved configuration (the seed aside): "
            + "; ".join(borrowed),
        ]
    close, single = pairs_within_noise(rows)
    if close:
        lines += [
            "",
            "Rows whose AP lies within the noise of each other (Welch's t-test, p ≥ 0.05): "
            + "; ".join(f"{a} ~ {b} (p = {p:.2f})" for a, b, p in close),
        ]
    if single:
        lines += [
            "",
            "Rows with fewer than 2 finished seeds (no test can separate them from noise): " + "; ".join(single),
        ]
    return "\n".join(lines + per_seed_table(rows)) + "\n"


def per_seed_table(rows: list[dict]) -> list[str]:
    """The per-seed section: a column per seed, a cell per run (`seed_cell`), "–" where a row lacks it."""
    seeds = sorted({seed for row in rows for seed in row["per_seed"]}, key=lambda s: (s is None, str(s).zfill(9)))
    lines = [
        "",
        "Per seed: final AP (the AP at each evaluation in train.log); CPU kind or GPU, precision; "
        "classes at ≥ 10 AP / < 1 AP of those evaluated.",
        "",
        "| row | " + " | ".join("no seed" if seed is None else f"seed {seed}" for seed in seeds) + " |",
        "|" + "---|" * (len(seeds) + 1),
    ]
    for row in rows:
        cells = [" / ".join(row["per_seed"].get(seed, ["–"])) for seed in seeds]
        lines.append(f"| {row['row']} | " + " | ".join(cells) + " |")
    return lines


def _metric(row: dict, metric: str) -> str:
    if row.get(metric) is None:
        return "–"
    std = row.get(f"{metric}_std")
    return f"{row[metric]:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def _cell(value) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def draw(rows: list[dict], title: str, path: Path) -> None:
    """Our mean AP with ± std bars (left axis) and the paper's AP (right axis), row by row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(rows))
    figure, ours = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) + 2), 4.2))
    means = [r["AP"] if r["AP"] is not None else np.nan for r in rows]
    stds = [r["AP_std"] or 0.0 for r in rows]
    ours.errorbar(x, means, yerr=stds, fmt="o", color="tab:blue", capsize=4, label="ours (mean ± std)")
    for i, r in enumerate(rows):
        if r["n"] == 0:
            ours.annotate(r["runs"].split(", ", 1)[-1], (i, 0), ha="center", va="bottom", color="tab:red", fontsize=8)
    ours.set_ylabel("our AP", color="tab:blue")
    ours.set_xticks(x, [r["row"].split("=")[-1] for r in rows], rotation=30, ha="right")
    if any(r.get("paper_AP") is not None for r in rows):
        paper = ours.twinx()
        paper.plot(
            x,
            [r.get("paper_AP") if r.get("paper_AP") is not None else np.nan for r in rows],
            "s",
            color="tab:orange",
            label="paper",
        )
        paper.set_ylabel("paper AP", color="tab:orange")
        figure.legend(loc="upper right")
    ours.set_title(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None, prog: str | None = None) -> str:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("multirun_dir", type=Path)
    parser.add_argument("--paper", type=Path, default=DEFAULT_PAPER, help="published values, keyed by sweep name")
    parser.add_argument("--no-picture", action="store_true", help="do not draw table.png (needs matplotlib)")
    args = parser.parse_args(argv)
    markdown, rows, runs = build_table(args.multirun_dir, args.paper)
    (args.multirun_dir / "table.md").write_text(markdown)
    _write_csv(
        args.multirun_dir / "table.csv",
        [{k: v for k, v in r.items() if k not in ("AP_values", "borrowed", "paper_index", "per_seed")} for r in rows],
    )
    _write_csv(args.multirun_dir / "runs.csv", runs)
    if not args.no_picture:
        try:
            draw(rows, markdown.splitlines()[0].lstrip("# "), args.multirun_dir / "table.png")
        except ImportError:
            print(
                "table.png not drawn: matplotlib is not installed (pip install matplotlib, or --no-picture)",
                file=sys.stderr,
            )
    print(markdown)
    return markdown


def _write_csv(path: Path, records: list[dict]) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)


if __name__ == "__main__":
    main()
