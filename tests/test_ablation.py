"""Stored sweeps compose, and scripts/ablation_table.py turns multirun folders into honest tables."""

import json
import subprocess
import sys

import pytest
import yaml
from PIL import Image
from omegaconf import OmegaConf

from tests.conftest import CONFIGS, ROOT, run_script

SWEEPS = sorted(p.stem for p in (CONFIGS / "sweep").glob("*.yaml"))


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
@pytest.mark.parametrize("preset", ["ablation_cpu", "ablation_coco"])
def test_every_stored_sweep_composes_at_both_scales(compose_cfg, name, preset):
    rows = sweep_rows(name)
    assert len(rows) >= 3
    for row in rows:
        cfg = compose_cfg([f"sweep={name}", f"experiment={preset}", row])
        key, value = row.lstrip("+").split("=", 1)
        if key in ("loss", "box_loss"):  # a group option: the composed loss is that file's
            assert cfg[key]._target_ == OmegaConf.load(CONFIGS / key / f"{value}.yaml")._target_
        elif "/" not in key:  # a value: composed as given
            assert str(OmegaConf.select(cfg, key)) == value
        assert (cfg.data.test_min_size == 600) == (preset == "ablation_coco")


def test_fl_table1b_rows_are_the_papers(compose_cfg):
    pairs = set()
    for row in sweep_rows("fl_table1b"):
        cfg = compose_cfg(["sweep=fl_table1b", "experiment=ablation_cpu", row])
        pairs.add((cfg.loss.gamma, cfg.loss.alpha))
    assert pairs == {(0.0, 0.75), (0.1, 0.75), (0.2, 0.75), (0.5, 0.5), (1.0, 0.25), (2.0, 0.25), (5.0, 0.25)}


@pytest.mark.parametrize("preset", ["ablation_cpu", "ablation_coco"])
def test_ghm_rows_carry_the_official_recipe(compose_cfg, preset):
    """GHM_Detection's config: GHM-C and GHM-R called per level, GHM-R (and ASL1, its one-bin
    case) weighted by 10, every row clipped at gradient norm 35."""
    recipe = {}
    for name in ("ghm_reg", "ghm_cls", "ghm_bins"):
        for row in sweep_rows(name):
            cfg = compose_cfg([f"sweep={name}", f"experiment={preset}", row])
            assert cfg.trainer.clip_grad_norm == 35.0, (name, row)
            recipe[name, row] = (cfg.box_loss._target_.rsplit(".", 1)[1], cfg.criterion.box_weight)
            assert cfg.loss.get("per_level", True) and cfg.box_loss.get("per_level", True)
            assert name != "ghm_reg" or cfg.loss._target_ == "detector.losses.GHMCLoss"
    assert recipe["ghm_reg", "+row/ghm_reg=sl1"] == ("SmoothL1Loss", 1.0)
    assert recipe["ghm_reg", "+row/ghm_reg=asl1"] == ("GHMRLoss", 10.0)
    assert recipe["ghm_reg", "+row/ghm_reg=ghm_r"] == ("GHMRLoss", 10.0)
    assert recipe["ghm_cls", "loss=ghm_c"] == ("SmoothL1Loss", 1.0)
    weights = {row: compose_cfg(["sweep=box_losses", row]).criterion.box_weight for row in sweep_rows("box_losses")}
    assert weights.pop("+row/box_losses=ghm_r") == 10.0 and set(weights.values()) == {1.0} and len(weights) == 8


def fake_job(root, index, alpha, metrics=None, log=""):
    job = root / str(index)
    (job / ".hydra").mkdir(parents=True)
    overrides = ["sweep=fl_table1a", "experiment=ablation_cpu", f"loss.alpha={alpha}"]
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"loss": {"alpha": alpha, "gamma": 0.0}}))
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": {"sweep": "fl_table1a"}}}}))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    (job / "train.log").write_text(log)


def metrics(ap):
    return {"AP": ap, "AP50": ap + 20, "AP75": ap + 1, "APs": 1.0, "APm": 2.0, "APl": -1.0, "iteration": 1400,
            "train_seconds": 660.5}


def test_ablation_table_on_a_fabricated_multirun(tmp_path):
    fake_job(tmp_path, 0, 0.25, metrics(5.0))
    fake_job(tmp_path, 1, 0.5, metrics(20.0))
    fake_job(tmp_path, 2, 0.75, metrics(25.0))
    fake_job(tmp_path, 3, 0.9, log="[x][detector.engine.trainer][ERROR] - non-finite loss at iteration 7: {}")
    fake_job(tmp_path, 4, 0.99)  # killed: no metrics, no error
    fake_job(tmp_path, 10, 0.999, metrics(1.0))  # job folders sort by number, not as text
    result = subprocess.run([sys.executable, "scripts/ablation_table.py", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "table.md").read_text()
    assert table == result.stdout.rstrip("\n") + "\n"
    lines = table.splitlines()
    assert lines[0] == f"# fl_table1a: {tmp_path}"
    assert lines[2].startswith("Paper: Lin et al.") and "Table 1a" in lines[2]
    assert lines[4] == "| row | status | AP | AP50 | AP75 | APs | APm | APl | iterations | train_seconds | paper_AP |"
    assert lines[6] == "| loss.alpha=0.25 | ok | 5.00 | 25.00 | 6.00 | 1.00 | 2.00 | -1.00 | 1400 | 660.50 | 10.80 |"
    assert lines[9] == "| loss.alpha=0.9 | diverged | – | – | – | – | – | – | – | – | 30.80 |"
    assert lines[10] == "| loss.alpha=0.99 | failed | – | – | – | – | – | – | – | – | 28.70 |"
    assert lines[11].startswith("| loss.alpha=0.999 | ok | 1.00 |") and lines[11].endswith("| 25.10 |")
    # ours 5, 20, 25, 1 against the paper's 10.8, 30.2, 31.1, 25.1: ranks 2 3 4 1 vs 1 3 4 2, Σd² = 2,
    # ρ = 1 − 6·2 / (4·15) = 0.8
    assert lines[-1] == "Spearman rank correlation of AP with the paper's AP over 4 finished rows: ρ = 0.800"
    csv_lines = (tmp_path / "table.csv").read_text().splitlines()
    assert csv_lines[0] == "row,status,AP,AP50,AP75,APs,APm,APl,iterations,train_seconds,paper_AP"
    assert len(csv_lines) == 7 and "diverged" in csv_lines[4]


def test_two_job_smoke_multirun_completes_and_tabulates(tmp_path, cache_dir):
    sweep_dir = tmp_path / "sweep"
    result = run_script("train.py", "-m", "debug=smoke", "loss=focal,ce", f"data.cache_dir={cache_dir}",
                        f"hydra.sweep.dir={sweep_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    result = subprocess.run([sys.executable, "scripts/ablation_table.py", str(sweep_dir)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| loss=")]
    assert [r.split(" | ")[:2] for r in rows] == [["| loss=focal", "ok"], ["| loss=ce", "ok"]]

    # the same runs drawn by the gradient diagnostics: logged at the last iteration, one line per run
    picture = tmp_path / "gradients.png"
    result = subprocess.run([sys.executable, "scripts/plot_gradients.py", str(sweep_dir / "0"), str(sweep_dir / "1"),
                             "--out", str(picture)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    shares = {line.split(" | ")[0]: [float(c.rstrip(" %|")) for c in line.split(" | ")[1:]]
              for line in result.stdout.splitlines() if line.startswith("| loss=")}
    assert set(shares) == {"| loss=focal", "| loss=ce"}
    assert all(0.0 <= value <= 100.0 for row in shares.values() for value in row)
    # CE spends most of its gradient on easy negatives; FL (gamma 2, alpha 0.25) much less
    assert shares["| loss=ce"][2] > 50.0 > shares["| loss=focal"][2]
    assert Image.open(picture).size[0] > 500
    labelled = subprocess.run([sys.executable, "scripts/plot_gradients.py", str(sweep_dir / "0"), str(sweep_dir / "1"),
                               "--labels", "FL", "CE", "--out", str(picture)], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
    assert labelled.returncode == 0, labelled.stderr
    assert [line.split(" | ")[0] for line in labelled.stdout.splitlines() if line.startswith("| ")][1:] == ["| FL", "| CE"]
