import contextlib
import io
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


def run_tool(main, *args) -> subprocess.CompletedProcess:
    """A tool's `main(argv)` in this process, as its script would run: the exit code (a returned int,
    or SystemExit's; a SystemExit message goes to stderr with code 1, as Python prints it), stdout and
    stderr. Spares the tool tests a fresh interpreter each (importing torchvision alone takes 6 s);
    test_tools runs the installed command and a scripts/ wrapper as processes."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            returned = main([str(arg) for arg in args])
            code = returned if isinstance(returned, int) else 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
            if exit_.code is not None and not isinstance(exit_.code, int):
                print(exit_.code, file=err)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
