import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> str:
    """One synthetic-data cache for the whole session."""
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def compose_cfg():
    """compose_cfg(overrides, config_name="train") → the real composed config, as train.py sees it."""

    def _compose(overrides=(), config_name="train"):
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            return compose(config_name=config_name, overrides=list(overrides))

    return _compose


def run_script(script: str, *overrides: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run train.py / evaluate.py as a user would, from the repository root."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
