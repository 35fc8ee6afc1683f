"""Slow runs: the acceptance goal of the default recipe, its full 1400 iterations (about 13 minutes on
a CPU with bf16 kernels, about 55 in fp32 on an AVX2-only one), and the compiled training forward."""

import json

import pytest
import torch

from tests.conftest import run_script


@pytest.mark.slow
@pytest.mark.timeout(5400)
def test_default_training_reaches_ap50_of_50_on_the_synthetic_validation_split(tmp_path, cache_dir):
    run = tmp_path / "run"
    result = run_script("train.py", f"data.cache_dir={cache_dir}", f"hydra.run.dir={run}", timeout=5000)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["AP50"] >= 50.0, metrics
    assert min(metrics[k] for k in ("APs", "APm", "APl")) > 0, metrics


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_compiled_training_forward_trains_and_saves_the_bare_model(tmp_path, cache_dir):
    """trainer.compile=true: torch.compile's C++ backend on CPU (about 2 minutes of warm-up here)."""
    run = tmp_path / "run"
    result = run_script(
        "train.py",
        "debug=smoke",
        "trainer.compile=true",
        f"data.cache_dir={cache_dir}",
        f"hydra.run.dir={run}",
        timeout=1100,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    weights = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert not any(key.startswith("_orig_mod") for key in weights)
    assert json.loads((run / "metrics.json").read_text())["iteration"] == 4
