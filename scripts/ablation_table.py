"""Turn a finished Hydra multirun (a stored sweep) into a table, with the paper's numbers beside ours.

    python scripts/ablation_table.py MULTIRUN_DIR [--paper docs/paper_tables.yaml]

Reads every job folder's `.hydra/` (overrides, config, the sweep it belongs to) and
`metrics.json`; writes `table.md` and `table.csv` into MULTIRUN_DIR and prints the markdown.
A job without metrics is kept as a row: "diverged" if its log reports a non-finite loss,
"failed" otherwise (crashed, killed or still running). When the sweep is one of the papers'
tables, the published AP of the matching row stands beside ours, with the Spearman rank
correlation between the two AP columns over the rows that finished.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

from omegaconf import OmegaConf
from scipy.stats import spearmanr

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
DEFAULT_PAPER = Path(__file__).resolve().parents[1] / "docs" / "paper_tables.yaml"


def read_job(job_dir: Path) -> dict:
    hydra_dir = job_dir / ".hydra"
    overrides = list(OmegaConf.load(hydra_dir / "overrides.yaml"))
    choices = OmegaConf.load(hydra_dir / "hydra.yaml").hydra.runtime.choices
    job = {"dir": job_dir, "overrides": overrides, "config": OmegaConf.load(hydra_dir / "config.yaml"),
           "sweep": choices.get("sweep"), "metrics": None, "status": "failed"}
    metrics_file = job_dir / "metrics.json"
    if metrics_file.is_file():
        job["metrics"] = json.loads(metrics_file.read_text())
        job["status"] = "ok" if "AP" in job["metrics"] else "failed"
    elif any("non-finite loss" in log.read_text(errors="replace") for log in job_dir.glob("*.log")):
        job["status"] = "diverged"
    return job


def find_jobs(multirun_dir: Path) -> list[dict]:
    folders = [p.parent.parent for p in multirun_dir.glob("*/.hydra/overrides.yaml")]
    folders.sort(key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))
    return [read_job(folder) for folder in folders]


def row_labels(jobs: list[dict]) -> list[str]:
    """The overrides that differ between jobs (the swept ones), or all of them for a single job."""
    shared = set.intersection(*(set(job["overrides"]) for job in jobs)) if len(jobs) > 1 else set()
    return [" ".join(o for o in job["overrides"] if o not in shared) or "(defaults)" for job in jobs]


def _same(value, expected) -> bool:
    if isinstance(expected, list):
        return isinstance(value, list) and len(value) == len(expected) and all(map(_same, value, expected))
    if isinstance(expected, float) or isinstance(value, float):
        return value is not None and expected is not None and math.isclose(float(value), float(expected), rel_tol=1e-6)
    return value == expected


def paper_row(job: dict, table: dict) -> dict | None:
    for row in table["rows"]:
        if all(_same(_plain(OmegaConf.select(job["config"], key)), value) for key, value in row["match"].items()):
            return row
    return None


def _plain(value):
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def build_table(multirun_dir: Path, paper_file: Path = DEFAULT_PAPER) -> tuple[str, list[dict]]:
    jobs = find_jobs(multirun_dir)
    if not jobs:
        raise SystemExit(f"{multirun_dir}: no job folders with .hydra/overrides.yaml; is this a multirun directory?")
    sweep = next((job["sweep"] for job in jobs if job["sweep"]), None)
    tables = OmegaConf.to_container(OmegaConf.load(paper_file)) if paper_file.is_file() else {}
    table = tables.get(sweep) if sweep else None
    rows = []
    for job, label in zip(jobs, row_labels(jobs)):
        metrics = job["metrics"] or {}
        row = {"row": label, "status": job["status"], **{m: metrics.get(m) for m in METRICS},
               "iterations": metrics.get("iteration"), "train_seconds": metrics.get("train_seconds")}
        if table is not None:
            published = paper_row(job, table)
            row["paper_AP"] = published["AP"] if published else None
        rows.append(row)
    return _markdown(multirun_dir, sweep, table, rows), rows


def _markdown(multirun_dir: Path, sweep: str | None, table: dict | None, rows: list[dict]) -> str:
    columns = ["row", "status", *METRICS, "iterations", "train_seconds"] + (["paper_AP"] if table else [])
    lines = [f"# {sweep or 'multirun'}: {multirun_dir}", ""]
    if table:
        lines += [f"Paper: {table['source']}", ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    if table:
        pairs = [(r["AP"], r["paper_AP"]) for r in rows if r["status"] == "ok" and r.get("paper_AP") is not None]
        if len(pairs) >= 3:
            rho = spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic
            lines += ["", f"Spearman rank correlation of AP with the paper's AP over {len(pairs)} finished rows: "
                          f"ρ = {rho:.3f}"]
        else:
            lines += ["", f"Spearman rank correlation: needs at least 3 finished rows with a paper value, has {len(pairs)}"]
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("multirun_dir", type=Path)
    parser.add_argument("--paper", type=Path, default=DEFAULT_PAPER, help="published values, keyed by sweep name")
    args = parser.parse_args(argv)
    markdown, rows = build_table(args.multirun_dir, args.paper)
    (args.multirun_dir / "table.md").write_text(markdown)
    with open(args.multirun_dir / "table.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(markdown)
    return markdown


if __name__ == "__main__":
    main()
