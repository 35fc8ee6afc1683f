"""The acceptance goal of the default run, as `make train` runs it: slow (about 15 minutes)."""

import json

import pytest

from tests.conftest import run_script


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_default_training_reaches_ap50_of_50_on_the_synthetic_validation_split(tmp_path, cache_dir):
    run = tmp_path / "run"
    result = run_script("train.py", f"data.cache_dir={cache_dir}", f"hydra.run.dir={run}", timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["AP50"] >= 50.0, metrics
    assert min(metrics[k] for k in ("APs", "APm", "APl")) > 0, metrics
