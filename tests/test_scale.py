"""Scale paths on CPU: DDP through torchrun (gloo) and exact resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from hydra.utils import instantiate

from detector.engine.checkpoint import CheckpointError, load_checkpoint
from tests.conftest import ROOT, run_script


def weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def max_difference(a, b):
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def loss_lines(run_dir):
    return [
        line.split(" - ", 1)[1].split("  lr ")[0]
        for line in (run_dir / "train.log").read_text().splitlines()
        if "] - iter " in line
    ]


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path, cache_dir, compose_cfg):
    # GroupNorm backbone: BatchNorm statistics are per process without SyncBN, which PyTorch runs on GPUs only.
    # SGD: Adam divides each gradient by its own running norm and so turns float noise in a zero gradient
    # (a conv bias before GroupNorm) into a full-size step, in any implementation.
    # A low LR (all 4 steps inside the warmup): GroupNorm over the smoke model's 1×1 P7 maps has no variance to
    # divide by and multiplies float noise; at the full LR the two runs part by 1e-4 after 4 steps.
    common = [
        "debug=smoke",
        "model.backbone.norm=gn",
        "optim=sgd",
        "data.batch_size=4",
        "trainer.max_iters=4",
        "schedule.warmup_iters=8",
        "trainer.diagnostics_period=2",
        f"data.cache_dir={cache_dir}",
    ]
    one, two = tmp_path / "one", tmp_path / "two"
    result = run_script("train.py", *common, f"hydra.run.dir={one}")
    assert result.returncode == 0, result.stderr[-3000:]
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "train.py",
            *common,
            f"hydra.run.dir={two}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    assert max_difference(weights(one), weights(two)) < 1e-5
    cfg = compose_cfg(common)
    torch.manual_seed(0)
    assert max_difference(weights(one), instantiate(cfg.model, num_classes=6).state_dict()) > 1e-3  # it trained
    assert loss_lines(two) == loss_lines(one) and len(loss_lines(two)) == 4  # averaged losses, summed positives
    assert "2 processes" in (two / "train.log").read_text()
    writers = {path.name.split(".")[-2] for path in (two / "tb").glob("events.out.tfevents.*")}
    assert len(writers) == 1  # one process wrote the events (its training log and its HParams record)
    # one process wrote the checkpoints and the record of the run's launch (a refused resume puts it back)
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["best.pt", "hydra", "last.pt"]
    assert sorted(p.name for p in (two / "checkpoints" / "hydra").iterdir()) == sorted(
        p.name for p in (two / ".hydra").iterdir()
    )
    scored_one, scored_two = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert {k: scored_two[k] for k in ("AP", "AP50", "iteration")} == {
        k: scored_one[k] for k in ("AP", "AP50", "iteration")
    }


def test_sigkill_then_resume_auto_ends_bit_identical_to_an_uninterrupted_run(tmp_path, cache_dir):
    common = [
        "debug=smoke",
        "trainer.max_iters=8",
        "trainer.checkpoint_period=2",
        "trainer.eval_period=4",
        f"data.cache_dir={cache_dir}",
    ]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    result = run_script("train.py", *common, f"hydra.run.dir={straight}")
    assert result.returncode == 0, result.stderr[-3000:]

    process = subprocess.Popen(
        [sys.executable, "train.py", *common, f"hydra.run.dir={killed}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint, reached = killed / "checkpoints" / "last.pt", 0
    deadline = time.monotonic() + 300
    while reached < 4 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            reached = load_checkpoint(checkpoint)["iteration"] if checkpoint.exists() else 0
        except CheckpointError:  # never a half-written file: the rename is atomic; a race with the rename only
            pass
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 4 <= reached < 8 and not (killed / "metrics.json").exists(), "the run was not killed mid-way"

    result = run_script("train.py", *common, f"hydra.run.dir={killed}", "trainer.resume=auto")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in (killed / "train.log").read_text()
    assert max_difference(weights(straight), weights(killed)) == 0.0
    keys = ("AP", "AP50", "AP75", "iteration")
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (straight, killed)]
    assert {k: metrics[1][k] for k in keys} == {k: metrics[0][k] for k in keys}
    # every iteration logged before the kill and after the resume shows the uninterrupted run's losses
    assert set(loss_lines(killed)) == set(loss_lines(straight)) and len(loss_lines(straight)) == 8


@pytest.mark.slow
def test_submitit_local_sweep_of_two_jobs_each_with_two_ddp_tasks(tmp_path, cache_dir):
    """The local executor of the launcher that drives SLURM: ranks come from submitit's environment.
    Slow tier (48 s on 2 cores); the fast tier keeps DDP under torchrun (gloo) and the parallel launcher."""
    sweep = tmp_path / "sweep"
    result = run_script(
        "train.py",
        "-m",
        "debug=smoke",
        "loss=focal,ce",
        "model.backbone.norm=gn",
        "data.batch_size=4",
        "hydra/launcher=submitit_local",
        "hydra.launcher.tasks_per_node=2",
        f"hydra.sweep.dir={sweep}",
        f"data.cache_dir={cache_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for job in ("0", "1"):
        assert json.loads((sweep / job / "metrics.json").read_text())["iteration"] == 2
        assert "(amp=off, 2 processes)" in (sweep / job / "train.log").read_text()


def test_cluster_launcher_preset_composes():
    slurm = subprocess.run(
        [
            sys.executable,
            "train.py",
            "hydra/launcher=slurm",
            "hydra.launcher.partition=gpu",
            "--cfg",
            "hydra",
            "--resolve",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert slurm.returncode == 0, slurm.stderr
    launcher = yaml.safe_load(slurm.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("SlurmLauncher") and launcher["partition"] == "gpu"
    assert launcher["tasks_per_node"] == launcher["gpus_per_node"] == 8


def test_parallel_launcher_runs_two_jobs_with_data_loader_workers(tmp_path, cache_dir):
    """joblib's loky processes default to a start method that cannot start DataLoader workers."""
    sweep = tmp_path / "sweep"
    result = run_script(
        "train.py",
        "-m",
        "debug=smoke",
        "loss=focal,ce",
        "trainer.max_iters=2",
        "data.num_workers=1",
        "hydra/launcher=parallel",
        f"hydra.sweep.dir={sweep}",
        f"data.cache_dir={cache_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    for job in ("0", "1"):
        assert json.loads((sweep / job / "metrics.json").read_text())["iteration"] == 2


def test_sync_bn_on_cpu_under_ddp_is_refused_with_the_alternative(compose_cfg, cache_dir, tmp_path):
    from detector.cli import build
    from detector.engine.distributed import Distributed
    from detector.engine.settings import TrainerSettings
    from detector.engine.trainer import Trainer

    cfg = compose_cfg(["debug=smoke", f"data.cache_dir={cache_dir}"])
    model, criterion, _ = build(cfg, 6)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(ValueError, match=r"trainer.sync_bn=true needs CUDA .*\(model.backbone.norm=gn\)"):
        Trainer(
            model,
            criterion,
            optimizer,
            None,
            lambda start: iter(()),
            None,
            tmp_path,
            settings=TrainerSettings(max_iters=1, sync_bn=True),
            batch_size=2,
            device=torch.device("cpu"),
            distributed=Distributed(rank=0, world_size=2),
        )
