"""The benchmarks compare like with like, and run."""

import json
import subprocess
import sys

import pytest
import torch
from torchvision.models.detection.image_list import ImageList

from detector.engine.allocator import preload
from detector.tools.benchmarks.train import ours, torchvision_model
from tests.conftest import ROOT


def test_benchmark_models_have_the_same_size_anchors_and_head_outputs():
    model, _, _ = ours()
    reference = torchvision_model(256, 320)
    images = torch.rand(2, 3, 256, 320)
    with torch.no_grad():
        outputs = model.eval()(images)
        features = list(reference.eval().backbone(images).values())
        head = reference.head(features)
        anchors = reference.anchor_generator(ImageList(images, [(256, 320)] * 2), features)
    assert outputs["cls_logits"].shape == head["cls_logits"].shape == (2, 15354, 80)
    assert outputs["box_deltas"].shape == head["bbox_regression"].shape
    assert outputs["anchors"].shape == anchors[0].shape
    for trainable in (False, True):
        counts = [
            sum(p.numel() for p in m.parameters() if p.requires_grad or not trainable) for m in (model, reference)
        ]
        assert counts[0] == counts[1]


@pytest.mark.slow  # 42 s: two R50 models in fresh processes, profiled; a measuring tool, not a training path
@pytest.mark.parametrize("allocator", ["system", "both"])
def test_benchmark_runs_and_reports_both_systems(tmp_path, allocator):
    if allocator == "both" and preload() is None:
        pytest.skip("neither jemalloc nor mimalloc is installed")
    out = tmp_path / "benchmark.json"
    result = subprocess.run(
        [
            sys.executable,
            "scripts/benchmark.py",
            "--sizes",
            "128x160",
            "--boxes",
            "3",
            "--precision",
            "fp32",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--allocator",
            allocator,
            "--profile",
            "--conv-map",
            "16x20",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    (train,) = report["train"]
    assert train["ours_images_per_s"] > 0 and train["torchvision_images_per_s"] > 0
    assert train["speedup"] == pytest.approx(train["ours_images_per_s"] / train["torchvision_images_per_s"], rel=1e-2)
    assert [r["batch"] for r in report["inference"]] == [1, 8]
    assert 0 < report["flops"][0]["fraction_of_peak"]
    assert "| fp32 | 128x160 | 3 |" in result.stdout
    for rows in [report["system_allocator"]["train"] if allocator == "both" else report["train"]]:
        assert rows[0]["ours_peak_mib"] > 50 and rows[0]["torchvision_peak_mib"] > 50  # R50: 150 MiB of weights
    profiles = {(p["model"], p["step"]): p for p in report["profile"]}
    assert set(profiles) == {
        (model, step) for model in ("ours", "torchvision") for step in ("training step", "inference, batch 8")
    }
    assert all(0 < p["convolution_share"] < 1 and p["top"][0]["ms"] > 0 for p in profiles.values())
    assert "profile of one inference, batch 8: ours, fp32, 128x160" in result.stdout
    assert result.stdout.startswith("machine: ") or "\nmachine: " in result.stdout
    assert report["machine"]["cpu_kind"] in ("AVX2", "AVX-512", "AVX-512 BF16", "AMX", "other")
    assert report["not_timed"] == []  # fp32 only
    if allocator == "both":
        assert report["machine"]["ld_preload"] == preload()[1]["LD_PRELOAD"]
        assert f"ours, {preload()[0]}" in result.stdout
        assert report["system_allocator"]["machine"]["ld_preload"] == ""
        assert len(report["system_allocator"]["train"]) == 1 and not report["system_allocator"]["inference"]
        assert "tv, system malloc" in result.stdout
        assert report["settings"]["allocator"] == "both" and not report["settings"]["child"]
