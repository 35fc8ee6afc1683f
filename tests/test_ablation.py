"""Stored sweeps compose, and scripts/ablation_table.py turns multirun folders into honest tables."""

import copy
import json
import re
import shutil
import subprocess
import sys

import pytest
import yaml
from omegaconf import OmegaConf
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from detector.tools import ablation_table, compare_runs
from detector.tools.ablation_table import DEFAULT_PAPER, paper_row
from tests.conftest import CONFIGS, ROOT, run_script, run_tool

SWEEPS = sorted(p.stem for p in (CONFIGS / "sweep").glob("*.yaml"))
PAPER_TABLES = yaml.safe_load(DEFAULT_PAPER.read_text())


def sweep_rows(name):
    """Each swept override on its own (every row file of a glob, every value of a list)."""
    params = yaml.safe_load((CONFIGS / "sweep" / f"{name}.yaml").read_text())["hydra"]["sweeper"]["params"]
    rows = []
    for key, values in params.items():
        if str(values).startswith("glob("):
            group = key.lstrip("+")
            rows += [f"{key}={p.stem}" for p in sorted((CONFIGS / group).glob("*.yaml"))]
        else:
            rows += [f"{key}={v}" for v in str(values).split(",")]
    return rows


@pytest.mark.parametrize("name", SWEEPS)
@pytest.mark.parametrize("preset", ["paper_cpu", "ablation_cpu", "ablation_coco"])
def test_every_stored_sweep_composes_at_every_scale(compose_cfg, name, preset):
    rows = [row for row in sweep_rows(name) if not row.startswith("seed=")]  # seeds compose alike everywhere
    assert len(rows) >= 3
    if preset != "ablation_cpu":  # the rows are the same overrides at every scale: one row shows the preset applies
        rows = rows[:1]
    for row in rows:
        cfg = compose_cfg([f"sweep={name}", f"experiment={preset}", row])
        key, value = row.lstrip("+").split("=", 1)
        if key in ("loss", "box_loss"):  # a group option: the composed loss is that file's
            assert cfg[key]._target_ == OmegaConf.load(CONFIGS / key / f"{value}.yaml")._target_
        elif "/" not in key:  # a value: composed as given
            assert str(OmegaConf.select(cfg, key)) == value
        assert (cfg.data.test_min_size == 600) == (preset == "ablation_coco")
        if preset == "paper_cpu":  # the paper's recipe on the COCO-like data, from the pretrained backbone
            assert cfg.optim._target_ == "torch.optim.SGD" and cfg.data.prepare._target_.endswith("prepare_glyphs_coco")
            assert cfg.model.backbone.norm == "frozen_bn" and cfg.model.backbone.weights_path == cfg.pretrain.out


def test_modern_losses_rows_swap_the_loss_the_box_head_and_the_matcher(compose_cfg):
    rows = {}
    for row in (row for row in sweep_rows("modern_losses") if not row.startswith("seed=")):
        cfg = compose_cfg(["sweep=modern_losses", "experiment=paper_cpu", row])
        published = paper_row({"config": cfg}, PAPER_TABLES["modern_losses"])
        rows[row.split("=")[1]] = (
            cfg.loss._target_.rsplit(".")[-1],
            cfg.box_loss._target_.rsplit(".")[-1],
            cfg.criterion.matcher._target_.rsplit(".")[-1],
            cfg.model.head.reg_max,
            published and published["AP"],
        )
    assert rows == {  # and the published AP beside it (the mmdetection zoo), where there is one
        "focal": ("FocalLoss", "SmoothL1Loss", "IoUMatcher", None, 36.5),
        "qfl": ("QualityFocalLoss", "SmoothL1Loss", "IoUMatcher", None, None),
        "vfl": ("VarifocalLoss", "SmoothL1Loss", "IoUMatcher", None, None),
        "poly1_focal": ("Poly1Loss", "SmoothL1Loss", "IoUMatcher", None, None),
        "efl": ("EqualizedFocalLoss", "SmoothL1Loss", "IoUMatcher", None, None),
        "gfl": ("QualityFocalLoss", "GIoULoss", "IoUMatcher", 16, 40.2),
        "atss_focal": ("FocalLoss", "SmoothL1Loss", "ATSSMatcher", None, 39.4),
        "atss_qfl": ("QualityFocalLoss", "SmoothL1Loss", "ATSSMatcher", None, None),
    }


def test_every_stored_sweep_runs_three_seeds_a_row():
    assert all({f"seed={seed}" for seed in range(3)} <= set(sweep_rows(name)) for name in SWEEPS)


def test_every_stored_sweep_has_a_folder_of_its_own_and_resumes_its_jobs():
    """multirun/<experiment>/<sweep>, not a timestamp: rerunning the line finds its jobs' checkpoints."""
    for name in SWEEPS:
        stored = yaml.safe_load((CONFIGS / "sweep" / f"{name}.yaml").read_text())
        assert stored["hydra"]["sweep"]["dir"] == f"multirun/${{hydra.runtime.choices.experiment}}/{name}", name
        assert stored["trainer"]["resume"] == "auto", name


def test_a_stored_sweep_rerun_resumes_in_its_folder_and_a_changed_line_cannot_take_a_job_over(tmp_path, cache_dir):
    """The same line twice: the second launch finds the finished job and trains nothing. A line whose job 0
    is another configuration is refused, and the job's `.hydra/` (what ablation-table names it by) is the
    finished run's again. A fresh start over the job (`trainer.resume=null`) makes its record the new run's,
    so that a later refused launch puts back the run that the folder now holds."""

    def launch(loss, *extra):
        return subprocess.run(
            [sys.executable, str(ROOT / "train.py"), "-m", "sweep=prior", "experiment=ablation_cpu", "debug=smoke"]
            + ["seed=0", f"loss={loss}", "model.prior_prob=0.01", f"data.cache_dir={cache_dir}", *extra],
            cwd=tmp_path,  # the sweep's folder is relative, as from the repository root
            capture_output=True,
            text=True,
            timeout=300,
        )

    job = tmp_path / "multirun" / "ablation_cpu" / "prior" / "0"
    assert launch("focal").returncode == 0
    metrics = (job / "metrics.json").read_text()
    assert (job / "checkpoints" / "hydra" / "overrides.yaml").is_file()
    shutil.rmtree(job / "checkpoints" / "hydra")  # as a run of older code: its first accepted resume keeps one
    again = launch("focal")
    assert again.returncode == 0 and "nothing to train or evaluate" in again.stdout + again.stderr
    assert (job / "checkpoints" / "hydra" / "overrides.yaml").is_file()
    other = launch("ce")
    assert other.returncode != 0 and "loss._target_: 'detector.losses.FocalLoss' in the checkpoint" in other.stderr
    assert "loss=focal" in OmegaConf.load(job / ".hydra" / "overrides.yaml")
    assert OmegaConf.load(job / ".hydra" / "config.yaml").loss._target_ == "detector.losses.FocalLoss"
    assert (job / "metrics.json").read_text() == metrics
    assert launch("ce", "trainer.resume=null").returncode == 0
    assert "loss=ce" in OmegaConf.load(job / "checkpoints" / "hydra" / "overrides.yaml")
    refused = launch("focal")
    assert refused.returncode != 0 and "in the checkpoint" in refused.stderr
    assert OmegaConf.load(job / ".hydra" / "config.yaml").loss._target_ == "detector.losses.SigmoidCrossEntropyLoss"


@pytest.mark.parametrize("name", [name for name in SWEEPS if name in PAPER_TABLES])
def test_each_row_of_a_papers_sweep_gets_its_own_published_row_and_another_loss_gets_none(compose_cfg, name):
    """A published number stands beside a row only when the row is the paper's: the swept value and both
    losses (GHM-C in the GHM regression table, Smooth L1 in the classification ones). The same row with
    another classification or box loss gets none. modern_losses is the exception: the zoo's models differ
    from ours beyond the loss, and its rows name what they change (test_modern_losses_rows_swap_...)."""
    table = PAPER_TABLES[name]
    rows = [row for row in sweep_rows(name) if not row.startswith("seed=")]
    configs = [compose_cfg([f"sweep={name}", "experiment=paper_cpu", row]) for row in rows]
    published = [paper_row({"config": cfg}, table) for cfg in configs]
    if name == "modern_losses":  # the zoo has three of its eight rows (test_modern_losses_rows_swap_...)
        assert sum(p is not None for p in published) == 3
        return
    assert all(p is not None for p in published), [r for r, p in zip(rows, published) if p is None]
    assert len({id(p) for p in published}) == len(rows)  # no two rows share a published row
    for row, cfg, own in zip(rows, configs, published):
        assert {"loss._target_", "box_loss._target_"} <= {*table.get("match", {}), *own["match"]}, row
        for key, foreign in (("loss", "detector.losses.VarifocalLoss"), ("box_loss", "detector.losses.SIoULoss")):
            changed = copy.deepcopy(cfg)
            changed[key]._target_ = foreign
            assert paper_row({"config": changed}, table) is None, (row, key)


def test_fl_table1b_rows_are_the_papers(compose_cfg):
    pairs = set()
    for row in (row for row in sweep_rows("fl_table1b") if not row.startswith("seed=")):
        cfg = compose_cfg(["sweep=fl_table1b", "experiment=ablation_cpu", row])
        pairs.add((cfg.loss.gamma, cfg.loss.alpha))
    assert pairs == {(0.0, 0.75), (0.1, 0.75), (0.2, 0.75), (0.5, 0.5), (1.0, 0.25), (2.0, 0.25), (5.0, 0.25)}


@pytest.mark.parametrize("preset", ["paper_cpu", "ablation_cpu"])
def test_ghm_rows_carry_the_official_recipe(compose_cfg, preset):
    """GHM_Detection's config: GHM-C and GHM-R called per level, GHM-R (and ASL1, its one-bin
    case) weighted by 10, every row clipped at gradient norm 35."""
    recipe = {}
    for name in ("ghm_reg", "ghm_cls", "ghm_bins"):
        for row in (row for row in sweep_rows(name) if not row.startswith("seed=")):
            cfg = compose_cfg([f"sweep={name}", f"experiment={preset}", row])
            assert cfg.trainer.clip_grad_norm == 35.0, (name, row)
            recipe[name, row] = (cfg.box_loss._target_.rsplit(".", 1)[1], cfg.criterion.box_weight)
            assert cfg.loss.get("per_level", True) and cfg.box_loss.get("per_level", True)
            assert name != "ghm_reg" or cfg.loss._target_ == "detector.losses.GHMCLoss"
    assert recipe["ghm_reg", "+row/ghm_reg=sl1"] == ("SmoothL1Loss", 1.0)
    assert recipe["ghm_reg", "+row/ghm_reg=asl1"] == ("GHMRLoss", 10.0)
    assert recipe["ghm_reg", "+row/ghm_reg=ghm_r"] == ("GHMRLoss", 10.0)
    assert recipe["ghm_cls", "loss=ghm_c"] == ("SmoothL1Loss", 1.0)
    weights = {
        row: compose_cfg(["sweep=box_losses", row]).criterion.box_weight
        for row in sweep_rows("box_losses")
        if row.startswith("+row/")
    }
    assert weights.pop("+row/box_losses=ghm_r") == 10.0 and set(weights.values()) == {1.0} and len(weights) == 8


def fake_job(root, index, alpha, metrics=None, log="", seed=None):
    job = root / str(index)
    (job / ".hydra").mkdir(parents=True)
    overrides = ["sweep=fl_table1a", "experiment=ablation_cpu", f"loss.alpha={alpha}"] + (
        [f"seed={seed}"] * (seed is not None)
    )
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    config = {
        "loss": {"_target_": "detector.losses.SigmoidCrossEntropyLoss", "alpha": alpha},
        "box_loss": {"_target_": "detector.losses.SmoothL1Loss"},
        **({"seed": seed} if seed is not None else {}),
    }
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (job / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump({"hydra": {"runtime": {"choices": {"sweep": "fl_table1a"}}}})
    )
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    (job / "train.log").write_text(log)


DIVERGED = {"status": "diverged", "iteration": 7, "error": "non-finite loss for 3 iterations in a row"}


def metrics(ap):
    return {
        "AP": ap,
        "AP50": ap + 20,
        "AP75": ap + 1,
        "APs": 1.0,
        "APm": 2.0,
        "APl": -1.0,
        "iteration": 1400,
        "train_seconds": 660.5,
    }


def tabulate(root, as_script=False):
    """The table `detector ablation-table ROOT` writes, in this process; `as_script`: through the
    scripts/ wrapper in a fresh interpreter, as a user runs it."""
    if as_script:
        result = subprocess.run(
            [sys.executable, "scripts/ablation_table.py", str(root)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    else:
        result = run_tool(ablation_table.main, root)
    assert result.returncode == 0, result.stderr
    table = (root / "table.md").read_text()
    assert table == result.stdout.rstrip("\n") + "\n"
    return table.splitlines()


def main_table(lines: list[str]) -> list[str]:
    """The lines before the per-seed table, which repeats the row labels."""
    return lines[: next((i for i, line in enumerate(lines) if line.startswith("Per seed: ")), len(lines))]


def test_ablation_table_on_a_fabricated_multirun(tmp_path):
    fake_job(tmp_path, 0, 0.25, metrics(5.0))
    fake_job(tmp_path, 1, 0.5, metrics(20.0))
    fake_job(tmp_path, 2, 0.75, metrics(25.0))
    fake_job(tmp_path, 3, 0.9, DIVERGED, log="[x][detector.engine.trainer][ERROR] - non-finite loss at iteration 7")
    skipped = "[x][detector.engine.trainer][WARNING] - non-finite loss at iteration 5 (…); step skipped, 1 in a row"
    fake_job(tmp_path, 4, 0.99, log=skipped)  # killed after a skipped step: failed (only metrics.json says diverged)
    fake_job(tmp_path, 10, 0.999, metrics(1.0))  # job folders sort by number, not as text
    lines = tabulate(tmp_path, as_script=True)
    assert lines[0] == f"# fl_table1a: {tmp_path}"
    assert lines[2].startswith("Paper: Lin et al.") and "Table 1a" in lines[2]
    assert lines[6] == "| row | runs | AP | AP50 | AP75 | APs | APm | APl | iterations | train_seconds | paper_AP |"
    assert lines[8] == "| loss.alpha=0.25 | 1 ok | 5.00 | 25.00 | 6.00 | 1.00 | 2.00 | -1.00 | 1400 | 660.50 | 10.80 |"
    assert lines[11] == "| loss.alpha=0.9 | 0 ok, 1 diverged (seed None) | – | – | – | – | – | – | – | – | 30.80 |"
    assert lines[12] == "| loss.alpha=0.99 | 0 ok, 1 failed (seed None) | – | – | – | – | – | – | – | – | 28.70 |"
    assert lines[13].startswith("| loss.alpha=0.999 | 1 ok | 1.00 |") and lines[13].endswith("| 25.10 |")
    # ours 5, 20, 25, 1 against the paper's 10.8, 30.2, 31.1, 25.1: ranks 2 3 4 1 vs 1 3 4 2, Σd² = 2,
    # ρ = 1 − 6·2 / (4·15) = 0.8; one seed per row: there is nothing to resample
    assert lines[15] == (
        "Spearman rank correlation of the mean AP with the paper's AP over 4 rows: ρ = 0.800, "
        "no interval: one seed a row"
    )
    assert lines[17].startswith(
        "Rows with fewer than 2 finished seeds (no test can separate them from noise): loss.alpha=0.25;"
    )
    assert lines[21:] == [  # jobs without a seed: one column; a run's status where it has no AP
        "| row | no seed |",
        "|---|---|",
        "| loss.alpha=0.25 | 5.00 |",
        "| loss.alpha=0.5 | 20.00 |",
        "| loss.alpha=0.75 | 25.00 |",
        "| loss.alpha=0.9 | diverged at iteration 7 |",
        "| loss.alpha=0.99 | failed |",
        "| loss.alpha=0.999 | 1.00 |",
    ]
    csv_lines = (tmp_path / "table.csv").read_text().splitlines()
    assert csv_lines[0].startswith("row,runs,n,seeds,AP,AP_std,AP50,AP50_std,") and csv_lines[0].endswith(",paper_AP")
    assert len(csv_lines) == 7 and "diverged" in csv_lines[4]
    assert Image.open(tmp_path / "table.png").size[0] >= 600


def test_rows_of_a_papers_table_come_in_its_order_whatever_their_folders_are_named(tmp_path):
    """Run records copied into named folders list as text (alpha0.99 before alpha0.9); the table keeps the
    paper's order, and a row the paper does not have comes after its rows."""
    for alpha in (0.6, 0.999, 0.99, 0.9, 0.1):
        fake_job(tmp_path, f"alpha{alpha}_s0", alpha, metrics(alpha * 10), seed=0)
    lines = tabulate(tmp_path)
    rows = [line.split(" | ")[0][2:] for line in main_table(lines) if line.startswith("| loss.alpha")]
    assert rows == [f"loss.alpha={alpha}" for alpha in (0.1, 0.9, 0.99, 0.999, 0.6)]
    per_seed = lines[next(i for i, line in enumerate(lines) if line.startswith("Per seed")) + 4 :]
    assert [line.split(" | ")[0][2:] for line in per_seed] == rows
    assert [line.split(",")[0] for line in (tmp_path / "table.csv").read_text().splitlines()[1:]] == rows


def test_seeds_are_one_row_with_mean_std_interval_and_noise(tmp_path):
    """Three seeds a row. α .25: 4, 5, 6 (mean 5, std 1); α .5: 20, 22 and a diverged seed; α .75:
    21, 23, 25 (mean 23, std 2); α .9: 30, 30, 30. The paper's order is .25 < .5 < .9 < .75 (10.8,
    30.2, 30.8, 31.1); ours by mean is .25 < .5 < .75 < .9: ρ = 0.8. Resamples can swap α .5 and
    α .75 (their seeds overlap): ranks 1 3 2 4 against 1 2 4 3, ρ = 1 − 6·6/60 = 0.4, the interval's
    low end; no resample lifts α .75 above α .9, so 0.8 is its high end. Those two are within the noise."""
    values = {0.25: [4.0, 5.0, 6.0], 0.5: [20.0, 22.0, None], 0.75: [21.0, 23.0, 25.0], 0.9: [30.0, 30.0, 30.0]}
    index = 0
    for alpha, aps in values.items():
        for seed, ap in enumerate(aps):
            fake_job(tmp_path, index, alpha, metrics(ap) if ap is not None else DIVERGED, seed=seed)
            index += 1
    lines = tabulate(tmp_path)
    rows = {
        line.split(" | ")[0][2:]: line.split(" | ") for line in main_table(lines) if line.startswith("| loss.alpha")
    }
    assert list(rows) == ["loss.alpha=0.25", "loss.alpha=0.5", "loss.alpha=0.75", "loss.alpha=0.9"]
    assert rows["loss.alpha=0.25"][1:4] == ["3 ok", "5.00 ± 1.00", "25.00 ± 1.00"]
    assert rows["loss.alpha=0.5"][1:3] == ["2 ok, 1 diverged (seed 2)", "21.00 ± 1.41"]
    assert rows["loss.alpha=0.75"][2] == "23.00 ± 2.00" and rows["loss.alpha=0.9"][2] == "30.00 ± 0.00"
    spearman = next(line for line in lines if line.startswith("Spearman"))
    rho, low, high = (float(v) for v in re.findall(r"(-?\d\.\d{3})", spearman))
    assert (rho, low, high) == (0.8, 0.4, 0.8)
    noise = next(line for line in lines if line.startswith("Rows whose AP lies within the noise"))
    assert "loss.alpha=0.5 ~ loss.alpha=0.75" in noise and "loss.alpha=0.25 ~" not in noise
    assert "loss.alpha=0.75 ~ loss.alpha=0.9" not in noise  # 21/23/25 against 30/30/30: p < 0.05
    runs = (tmp_path / "runs.csv").read_text().splitlines()
    assert len(runs) == 13 and runs[6].split(",")[:3] == ["loss.alpha=0.5", "2", "diverged"]


def coco_summary(ap: float) -> str:
    """The first two lines of a COCO summary, as the evaluation hook logs it."""
    return (
        f" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = {ap:.3f}\n"
        " Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets=100 ] = 0.900\n"
    )


def test_the_per_seed_table_shows_each_runs_curve_machine_and_classes(tmp_path):
    """α .25, seed 0: evaluated at 500 and 1,000, stopped, resumed, evaluated 1,000 again (the later value
    stands) and 1,500, on the AMX kind in bf16; classes 12 and 10 AP reach 10, 0.5 stays below 1, 3 does
    neither, and the class without ground truth (-1) is not counted. Seed 1 diverged at iteration 7.
    α .5 ran seed 1 only, evaluated once (no curve), on a GPU in fp16, without per-class AP."""
    evaluations = [
        f"[x][detector.engine.trainer][INFO] - evaluation at iteration {iteration}:\n"
        f"Evaluate annotation type *bbox*\n{coco_summary(ap)}"
        "[x][detector.engine.trainer][INFO] - iter 1/2  loss 1.0\n"
        for iteration, ap in ((500, 0.012), (1000, 0.031), (1000, 0.034), (1500, 0.05))
    ]
    per_class = [
        {"class": name, "AP": ap, "gt_boxes": boxes}
        for name, ap, boxes in (("a", 12.0, 3), ("b", 10.0, 2), ("c", 0.5, 4), ("d", 3.0, 1), ("e", -1.0, 0))
    ]
    amx = {"machine": {"cpu_kind": "AMX", "cuda": None}, "precision": {"used": "bf16"}, "per_class": per_class}
    gpu = {"machine": {"cpu_kind": "AVX2", "cuda": "NVIDIA H100"}, "precision": {"used": "fp16"}}
    fake_job(tmp_path, 0, 0.25, {**metrics(5.0), **amx}, log="".join(evaluations), seed=0)
    fake_job(tmp_path, 1, 0.25, DIVERGED, seed=1)
    fake_job(tmp_path, 2, 0.5, {**metrics(20.0), **gpu}, log=evaluations[0], seed=1)
    lines = tabulate(tmp_path)
    start = next(i for i, line in enumerate(lines) if line.startswith("Per seed: final AP"))
    assert lines[start + 2 :] == [
        "| row | seed 0 | seed 1 |",
        "|---|---|---|",
        "| loss.alpha=0.25 | 5.00 (1.2 · 3.4 · 5.0); AMX, bf16; 2 / 1 of 4 | diverged at iteration 7 |",
        "| loss.alpha=0.5 | – | 20.00; NVIDIA H100, fp16 |",
    ]
    assert "per_seed" not in (tmp_path / "table.csv").read_text().splitlines()[0]


def test_jobs_killed_before_hydra_wrote_their_folder_stay_visible_as_failed(tmp_path):
    """Jobs 1 and 3 finished; job 0 was killed after Hydra wrote its overrides (no hydra.yaml, no
    config.yaml), job 2 before it wrote anything; job 4 diverged (metrics.json has its status); job 5
    stopped after a checkpoint (resumable). The paper's row is found from a job with a full config."""
    fake_job(tmp_path, 0, 0.25, seed=1)
    fake_job(tmp_path, 1, 0.25, metrics(5.0), seed=0)
    fake_job(tmp_path, 3, 0.5, metrics(20.0), seed=0)
    fake_job(tmp_path, 4, 0.5, {"status": "diverged", "iteration": 9, "error": "non-finite loss …"}, seed=1)
    fake_job(tmp_path, 5, 0.5, seed=2)
    (tmp_path / "5" / "checkpoints").mkdir()
    (tmp_path / "5" / "checkpoints" / "last.pt").write_bytes(b"")
    for name in ("hydra.yaml", "config.yaml"):
        (tmp_path / "0" / ".hydra" / name).unlink()
    (tmp_path / "2").mkdir()
    lines = tabulate(tmp_path)
    assert lines[0] == f"# fl_table1a: {tmp_path}"  # the sweep, read from the jobs that have it
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in main_table(lines) if line.startswith("| ")}
    assert rows["loss.alpha=0.25"][1] == "1 ok, 1 failed (seed 1)" and rows["loss.alpha=0.25"][2] == "5.00"
    assert rows["loss.alpha=0.25"][-1] == "10.80 |" and rows["loss.alpha=0.5"][-1] == "30.20 |"
    assert rows["loss.alpha=0.5"][1] == "1 ok, 1 diverged (seed 1), 1 unfinished (seed 2)"  # from metrics.json
    assert rows["job 2 (no .hydra/overrides.yaml)"][1] == "0 ok, 1 failed (seed None)"


def test_a_seed_finished_twice_in_one_row_is_refused_and_a_failed_attempt_beside_it_is_kept(tmp_path):
    """Seed 1 of α .25 finished in jobs 1 and 2: as two samples they would give n 3 and a smaller
    std, so the table refuses and names the folders. A failed attempt of a seed beside its finished
    run (job 4 beside job 3, both seed 0 of α .5) is kept visible and does not count."""
    fake_job(tmp_path, 0, 0.25, metrics(5.0), seed=0)
    fake_job(tmp_path, 1, 0.25, metrics(6.0), seed=1)
    fake_job(tmp_path, 2, 0.25, metrics(6.5), seed=1)
    fake_job(tmp_path, 3, 0.5, metrics(20.0), seed=0)
    refused = run_tool(ablation_table.main, tmp_path)
    assert refused.returncode == 1 and not (tmp_path / "table.md").exists()
    assert "row 'loss.alpha=0.25': seed 1 finished in 2 job folders (1, 2)" in refused.stderr
    shutil.rmtree(tmp_path / "2")
    fake_job(tmp_path, 4, 0.5, DIVERGED, seed=0)
    lines = tabulate(tmp_path)
    rows = {
        line.split(" | ")[0][2:]: line.split(" | ") for line in main_table(lines) if line.startswith("| loss.alpha")
    }
    assert rows["loss.alpha=0.25"][1:3] == ["2 ok", "5.50 ± 0.71"]
    assert rows["loss.alpha=0.5"][1:3] == ["1 ok, 1 diverged (seed 0)", "20.00"]


def test_rows_run_one_at_a_time_are_tabulated_against_their_sweep(tmp_path):
    """`+row/fl_table3=NAME` runs, each started on its own in a folder of its choosing, beside a run
    of the same table named by its loss (no row group): the paper's table is found from the row group."""
    rows = {
        "ce_s0": ({"row/fl_table3": "ce"}, "detector.losses.SigmoidCrossEntropyLoss", {}, 1.0),
        "flstar_g4_b0_s0": ({"row/fl_table3": "flstar_g4_b0"}, "detector.losses.FocalStarLoss", {"beta": 0.0}, 3.0),
        "fl": ({"loss": "focal"}, "detector.losses.FocalLoss", {}, 6.0),
    }
    for name, (choices, target, extra, ap) in rows.items():
        job = tmp_path / name
        (job / ".hydra").mkdir(parents=True)
        row = f"+row/fl_table3={choices['row/fl_table3']}" if "row/fl_table3" in choices else "loss=focal"
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["experiment=paper_cpu", row]))
        loss = {"_target_": target, "gamma": 4.0 if extra else 2.0, **extra}
        box_loss = {"_target_": "detector.losses.SmoothL1Loss"}
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"loss": loss, "box_loss": box_loss, "seed": 0}))
        (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
        (job / "metrics.json").write_text(json.dumps(metrics(ap)))
    lines = tabulate(tmp_path)
    assert lines[0] == f"# fl_table3: {tmp_path}"
    table = {
        line.split(" | ")[0][2:]: line.split(" | ")
        for line in main_table(lines)
        if line.startswith(("| +row", "| loss"))
    }
    assert table["+row/fl_table3=ce"][2] == "1.00" and table["+row/fl_table3=ce"][-1] == "31.10 |"
    assert table["+row/fl_table3=flstar_g4_b0"][-1] == "33.90 |" and table["loss=focal"][-1] == "34.00 |"


def test_a_run_of_another_sweep_joins_the_row_with_its_resolved_configuration(tmp_path):
    """GHM-C + Smooth L1 is a row of both GHM tables. Seed 0 ran in `sweep=ghm_reg`; seeds 1 and 2 were
    copied in from `sweep=ghm_cls` (named there `loss=ghm_c`): the same resolved configuration, so one
    row of three seeds, labelled as in this sweep and listed as borrowed. A `sweep=ghm_cls` run of
    another configuration (FL) stays a row of its own."""

    def job(name, sweep, row, loss, box, ap, seed):
        run = tmp_path / name
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"seed={seed}", row, f"sweep={sweep}"]))
        config = {"loss": {"_target_": loss}, "box_loss": {"_target_": box, "bins": 10}, "seed": seed}
        (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
        (run / ".hydra" / "hydra.yaml").write_text(
            yaml.safe_dump({"hydra": {"runtime": {"choices": {"sweep": sweep}}}})
        )
        (run / "metrics.json").write_text(json.dumps(metrics(ap)))

    ghm_c, sl1, ghm_r = "detector.losses.GHMCLoss", "detector.losses.SmoothL1Loss", "detector.losses.GHMRLoss"
    for seed, ap in enumerate([2.0, 3.0, 4.0]):
        job(f"ghm_r_s{seed}", "ghm_reg", "+row/ghm_reg=ghm_r", ghm_c, ghm_r, ap, seed)
    job("sl1_s0", "ghm_reg", "+row/ghm_reg=sl1", ghm_c, sl1, 4.0, 0)
    job("sl1_s1_from_ghm_cls", "ghm_cls", "loss=ghm_c", ghm_c, sl1, 5.0, 1)
    job("sl1_s2_from_ghm_cls", "ghm_cls", "loss=ghm_c", ghm_c, sl1, 6.0, 2)
    job("fl_s0_from_ghm_cls", "ghm_cls", "loss=focal", "detector.losses.FocalLoss", sl1, 9.0, 0)
    lines = tabulate(tmp_path)
    assert lines[0] == f"# ghm_reg: {tmp_path}"  # the sweep of most jobs
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in main_table(lines) if line.startswith("| ")}
    assert rows["+row/ghm_reg=sl1"][1:3] == ["3 ok", "5.00 ± 1.00"] and rows["+row/ghm_reg=sl1"][-1] == "35.80 |"
    assert rows["+row/ghm_reg=ghm_r"][1:3] == ["3 ok", "3.00 ± 1.00"]
    # the paper's order; the FL run is no row of the paper's (its classification loss is not GHM-C), so it comes
    # last, without a published AP, and has no twin here: labelled among all the jobs, by what sets it apart
    assert list(rows)[1:] == ["+row/ghm_reg=sl1", "+row/ghm_reg=ghm_r", "loss=focal sweep=ghm_cls"]
    assert rows["loss=focal sweep=ghm_cls"][-1] == "– |"
    borrowed = next(line for line in lines if line.startswith("Runs from another sweep"))
    assert borrowed.endswith(
        "(the seed aside): +row/ghm_reg=sl1: sl1_s1_from_ghm_cls (ghm_cls), sl1_s2_from_ghm_cls (ghm_cls); "
        "loss=focal sweep=ghm_cls: fl_s0_from_ghm_cls (ghm_cls)"
    )
    runs = (tmp_path / "runs.csv").read_text().splitlines()
    assert runs[0].endswith(",dir,sweep") and any(r.endswith(",sl1_s2_from_ghm_cls,ghm_cls") for r in runs)
    assert "borrowed" not in (tmp_path / "table.csv").read_text().splitlines()[0]
    # a seed that finished in both sweeps is two runs of one seed: refused
    job("sl1_s0_from_ghm_cls", "ghm_cls", "loss=ghm_c", ghm_c, sl1, 4.0, 0)
    refused = run_tool(ablation_table.main, tmp_path)
    assert (
        refused.returncode == 1 and "seed 0 finished in 2 job folders (sl1_s0, sl1_s0_from_ghm_cls)" in refused.stderr
    )


@pytest.mark.slow  # 27 s; the fast tier keeps a real multirun (test_scale's parallel launcher) and the table's parsing
def test_two_job_smoke_multirun_completes_and_tabulates(tmp_path, cache_dir):
    sweep_dir = tmp_path / "sweep"
    result = run_script(
        "train.py", "-m", "debug=smoke", "loss=focal,ce", f"data.cache_dir={cache_dir}", f"hydra.sweep.dir={sweep_dir}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in main_table(tabulate(sweep_dir, as_script=True)) if line.startswith("| loss=")]
    assert [r.split(" | ")[:2] for r in rows] == [["| loss=focal", "1 ok"], ["| loss=ce", "1 ok"]]

    # the two real runs compared: every section, with the values their metrics.json and events hold
    result = run_tool(compare_runs.main, sweep_dir / "0", sweep_dir / "1", "--out", tmp_path / "report")
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "report" / "report.md").read_text()
    focal = json.loads((sweep_dir / "0" / "metrics.json").read_text())
    assert f"| loss=focal | 1 ok | {focal['AP']:.2f} | {focal['AP50']:.2f} |" in report
    for section in ("## Per-class AP", "## Where the classification gradient goes"):  # one evaluation: no AP table
        assert section in report
    assert "## AP50 gained by fixing each kind of error" in report and "| row | Cls | Loc |" in report
    for picture in ("pr_curves.png", "losses.png", "errors.png", "eval_ap.png"):
        assert (tmp_path / "report" / picture).stat().st_size > 5000

    # the same runs drawn by the gradient diagnostics: logged at the last iteration, one line per run
    picture = tmp_path / "gradients.png"
    result = subprocess.run(
        [
            sys.executable,
            "scripts/plot_gradients.py",
            str(sweep_dir / "0"),
            str(sweep_dir / "1"),
            "--out",
            str(picture),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    share_lines, box_lines = result.stdout.split("\n\n")[:2]
    shares = {
        line.split(" | ")[0]: [float(c.rstrip(" %|")) for c in line.split(" | ")[1:]]
        for line in share_lines.splitlines()
        if line.startswith("| loss=")
    }
    assert set(shares) == {"| loss=focal", "| loss=ce"}
    assert all(0.0 <= value <= 100.0 for row in shares.values() for value in row)
    # CE spends most of its gradient on easy negatives; FL (gamma 2, alpha 0.25) much less
    assert shares["| loss=ce"][2] > 50.0 > shares["| loss=focal"][2]
    # both runs' Smooth L1 on deltas: a box table, its mean |d| the last logged value
    box = {line.split(" | ")[0]: line.split(" | ")[1:] for line in box_lines.splitlines() if line.startswith("| loss=")}
    assert set(box) == {"| loss=focal", "| loss=ce"}
    events = EventAccumulator(str(sweep_dir / "0" / "tb"))
    events.Reload()
    assert float(box["| loss=focal"][0]) == pytest.approx(
        events.Scalars("gradients/box_mean_abs_residual")[-1].value, abs=1e-4
    )
    shares = [[float(cell.rstrip(" %|")) for cell in row[1:]] for row in box.values()]
    assert all(0.0 <= share <= 100.0 for row in shares for share in row)
    assert all(near + far <= 100.05 and far > 0.0 and gradient > 0.0 for near, far, gradient in shares)
    assert Image.open(picture).size[1] > 1200  # three rows of panels
    labelled = subprocess.run(
        [
            sys.executable,
            "scripts/plot_gradients.py",
            str(sweep_dir / "0"),
            str(sweep_dir / "1"),
            "--labels",
            "FL",
            "CE",
            "--out",
            str(picture),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert labelled.returncode == 0, labelled.stderr
    first_table = labelled.stdout.split("\n\n")[0]
    assert [line.split(" | ")[0] for line in first_table.splitlines() if line.startswith("| ")][1:] == ["| FL", "| CE"]


def fake_run(root, name, overrides, ap, per_class, shares, losses, seed=0):
    """A run directory as training writes it: .hydra/, metrics.json (with per_class, pr_curves and
    errors: AP/1, AP/2, … AP/6 for Cls … Miss) and TensorBoard events with the training loss and the
    gradient diagnostics."""
    from torch.utils.tensorboard import SummaryWriter

    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*overrides, f"seed={seed}"]))
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": seed}))
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": {}}}}))
    if ap is not None:
        rows = [{"class": c, "AP": v, "AP50": v, "AP75": v, "gt_boxes": n} for c, (v, n) in per_class.items()]
        curve = {"recall": [r / 100 for r in range(101)], "AP50": [ap + 20] * 101, "AP75": [ap] * 101}
        kinds = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")
        errors = {
            "AP50": ap + 20,
            "dAP": {k: ap / (i + 1) for i, k in enumerate(kinds)},
            "count": dict.fromkeys(kinds, 1),
        }
        record = {**metrics(ap), "per_class": rows, "pr_curves": curve, "errors": errors}
        (run / "metrics.json").write_text(json.dumps(record))
    writer = SummaryWriter(str(run / "tb"))
    for step, value in enumerate(losses, start=1):
        writer.add_scalar("train/loss", value, step * 10)
        if ap is not None:
            writer.add_scalar("eval/AP", ap * step / len(losses), step * 10)  # rising to the final AP
    for name_, value in shares.items():
        writer.add_scalar(f"gradients/{name_}", value, 10)
    writer.close()
    return run


def test_compare_runs_reports_two_runs_and_a_multirun_with_seeds(tmp_path):
    """Two runs: FL (AP 20) and CE (AP 15), CE the baseline. Then a multirun: FL with seeds 0, 1
    (AP 20, 22), CE with seed 0 (AP 15) and seed 1 failed (killed: no metrics)."""
    fl = fake_run(
        tmp_path,
        "fl",
        ["loss=focal"],
        20.0,
        {"cat": (30.0, 5), "dog": (10.0, 50)},
        {"easy_negative_gradient_share": 0.2},
        [2.0, 1.0],
    )
    ce = fake_run(
        tmp_path,
        "ce",
        ["loss=ce"],
        15.0,
        {"cat": (20.0, 5), "dog": (12.0, 50)},
        {"easy_negative_gradient_share": 0.7},
        [3.0, 2.5],
    )
    result = run_tool(compare_runs.main, fl, ce, "--baseline", "loss=ce", "--out", tmp_path / "report")
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "report" / "report.md").read_text()
    assert report.startswith("# Runs compared (baseline: loss=ce)")
    assert "| loss=focal | 1 ok | 20.00 | 40.00 | 21.00 | 1.00 | 2.00 | -1.00 | +5.00 |" in report
    assert "| loss=ce | 1 ok | 15.00 | 35.00 | 16.00 | 1.00 | 2.00 | -1.00 | +0.00 |" in report
    per_class = report.split("## Per-class AP")[1].split("##")[0].splitlines()
    assert [line.split(" | ")[0] for line in per_class if line.startswith("| ") and "---" not in line][1:] == [
        "| dog",
        "| cat",
    ]  # the most frequent class first
    assert "| dog | 50 | 12.00 | -2.00 |" in report and "| cat | 5 | 20.00 | +10.00 |" in report
    assert "| loss=focal | – | 0.20 | – |" in report and "| loss=ce | – | 0.70 | – |" in report
    assert "| loss=focal | 20.00 | 10.00 | 6.67 | 5.00 | 4.00 | 3.33 |" in report  # the TIDE breakdown, Cls … Miss
    assert "| loss=ce | 15.00 | 7.50 | 5.00 | 3.75 | 3.00 | 2.50 |" in report
    assert "| row | it 10 | it 20 |" in report and "| loss=focal | 10.00 | 20.00 |" in report  # AP while training
    for picture in ("pr_curves.png", "losses.png", "errors.png", "eval_ap.png"):
        assert f"![{picture}]({picture})" in report and (tmp_path / "report" / picture).stat().st_size > 5000

    multirun = tmp_path / "multirun"
    for index, (loss, seed, ap) in enumerate(
        [("focal", 0, 20.0), ("focal", 1, 22.0), ("ce", 0, 15.0), ("ce", 1, None)]
    ):
        fake_run(multirun, str(index), [f"loss={loss}"], ap, {"cat": (ap or 0.0, 5)}, {}, [1.0], seed=seed)
    result = run_tool(compare_runs.main, multirun)
    assert result.returncode == 0, result.stderr
    report = (multirun / "report" / "report.md").read_text()
    assert "| loss=focal | 2 ok | 21.00 |" in report and report.splitlines()[0].endswith("(baseline: loss=focal)")
    assert "| loss=ce | 1 ok, 1 failed (seed 1) | 15.00 |" in report and "| -6.00 |" in report
    assert "| cat | 5 | 21.00 | -6.00 |" in report
