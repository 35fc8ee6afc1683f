import importlib.util
import json
import subprocess

import pytest
import torch
from PIL import Image

from detector.tools import main as detector
from tests.conftest import ROOT, run_tool


def script_main(name):
    """scripts/NAME.py's main, loaded in this process (its own --help and argv handling kept)."""
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def benchmark(task, *args):
    """`detector benchmark --task TASK ARGS`, run in this process by `run_tool`."""
    return run_tool(detector, "benchmark", "--task", task, *args)


def test_plot_losses_writes_the_three_figures(tmp_path):
    result = run_tool(script_main("plot_losses"), "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    for name in ("focal_loss_vs_pt.png", "focal_star.png", "ghm_gradient_norm.png"):
        with Image.open(tmp_path / name) as image:
            assert image.width > 400 and image.height > 300


def test_loss_benchmark_reports_every_loss_and_ghm_agreement(tmp_path):
    out = tmp_path / "bench.json"
    result = benchmark(
        "loss",
        "--anchors",
        "2000",
        "--classes",
        "8",
        "--boxes",
        "64",
        "--repeats",
        "2",
        "--json",
        out,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    names = {p.stem for group in ("loss", "box_loss") for p in (ROOT / "configs" / group).glob("*.yaml")}
    timed = {
        k.split("=", 1)[1] for k in report["milliseconds"] if k.startswith(("loss=", "box_loss=")) and " " not in k
    }
    assert timed == names
    assert report["ghm_c_same_value"] is True
    assert report["focal_blocks_speedup"] > 0 and "focal, one block" in report["milliseconds"]


def test_evaluation_benchmark_times_both_backends_with_identical_stats(tmp_path):
    out = tmp_path / "evaluation.json"
    result = benchmark("eval", "--images", "40", "--repeats", "1", "--json", out)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["identical_stats"] is True and set(report["seconds"]) == {"pycocotools", "faster_coco_eval"}
    assert set(report["speedup"]) == {"total", "evaluate"} and report["speedup"]["evaluate"] > 0
    assert all(ratio > 1.0 for ratio in report["with_breakdown_over_without"].values())  # the TIDE breakdown, timed
    assert 0 < report["stats"]["pycocotools"]["AP"] < 100  # the fabricated detections are neither all hits nor misses


def test_loader_benchmark_reports_loader_and_training_throughput(tmp_path, cache_dir):
    out = tmp_path / "loader.json"
    result = benchmark(
        "loader",
        "debug=smoke",
        "data.num_workers=1",
        f"data.cache_dir={cache_dir}",
        "--batches",
        "3",
        "--steps",
        "2",
        "--json",
        out,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["num_workers"] == 1 and report["batch_size"] == 2
    assert report["loader_images_per_s"] > 0 and report["training_images_per_s"] > 0
    assert "loader / training" in result.stdout


def test_matcher_benchmark_times_blocks_against_one_call(tmp_path):
    out = tmp_path / "matcher.json"
    result = benchmark("matcher", "--size", "256x256", "--boxes", "5", "--repeats", "1", "--json", out)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["anchors"] == 9 * sum((256 // s) ** 2 for s in (8, 16, 32, 64, 128))
    assert {
        "iou, one call",
        "IoUMatcher (default blocks)",
        "ATSSMatcher",
        "criterion, QFL, onehot targets",
        "criterion, QFL, iou targets",
    } <= set(report["milliseconds"])
    assert all(ms > 0 for ms in report["milliseconds"].values())


def test_gpu_check_says_so_without_a_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: scripts/gpu_check.sh runs the real check")
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path / "out")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "no CUDA GPU visible" in result.stderr


def test_profile_step_splits_a_real_step_into_its_phases(tmp_path, cache_dir):
    out = tmp_path / "profile.json"
    result = run_tool(
        script_main("profile_step"),
        "debug=smoke",
        f"data.cache_dir={cache_dir}",
        "--steps",
        "2",
        "--ops",
        "3",
        "--json",
        out,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert list(report["seconds"]) == ["data", "backbone", "fpn+heads", "criterion", "backward", "optimizer"]
    assert all(value > 0 for value in report["seconds"].values()) and report["batch"] == [2, 3, 128, 128]
    assert report["step"] == sum(report["seconds"].values()) and "backward" in result.stdout
    assert report["layout"] == "channels-last"  # what training runs in (trainer.channels_last)
    assert len(report["operators"]) == 3 and "aten::convolution_backward" in report["operators"]
    assert all(value > 0 for value in report["operators"].values())
