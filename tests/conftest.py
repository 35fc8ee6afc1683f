import contextlib
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from detector.cli import build, build_datasets
from detector.data.loader import infinite_train_batches
from detector.engine.optimizer import build_optimizer
from detector.engine.schedule import lambda_scheduler
from detector.engine.settings import TrainerSettings
from detector.engine.trainer import Trainer

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


@pytest.fixture
def smoke_trainer(compose_cfg, cache_dir, tmp_path):
    """smoke_trainer(*overrides, **options) → a CPU Trainer of the `debug=smoke` configuration with those
    overrides, as the training-loop tests use it: the model built after torch.manual_seed(0), batches of 2
    from the training set's stream, a constant LR, no validator, its files in tmp_path. The keywords of
    TrainerSettings set its settings (max_iters: the config's unless given); `schedule` (iteration → LR
    factor), `batches` (start iteration → batches), `wrap_criterion` (criterion → criterion), `validator`,
    `output_dir`, `amp`, `clock` and `hooks` replace those parts; `run_config=True` passes the composed
    config and the class names, as train.py does."""

    def make(
        *overrides,
        schedule=lambda iteration: 1.0,
        batches=None,
        wrap_criterion=None,
        validator=None,
        output_dir=None,
        amp="off",
        clock=time.perf_counter,
        hooks=None,
        run_config=False,
        **settings,
    ):
        cfg = compose_cfg(["debug=smoke", f"data.cache_dir={cache_dir}", *overrides])
        train_set, _ = build_datasets(cfg.data)
        torch.manual_seed(0)
        model, criterion, _ = build(cfg, train_set.num_classes)
        optimizer = build_optimizer(cfg.optim, model)
        return Trainer(
            model,
            criterion if wrap_criterion is None else wrap_criterion(criterion),
            optimizer,
            lambda_scheduler(optimizer, schedule),
            batches or (lambda start: infinite_train_batches(train_set, 2, 0, 0, start)),
            validator,
            output_dir or tmp_path,
            settings=TrainerSettings(**{"max_iters": cfg.trainer.max_iters, **settings}),
            batch_size=2,
            device=torch.device("cpu"),
            amp=amp,
            run_config={**OmegaConf.to_container(cfg, resolve=True), "classes": train_set.class_names}
            if run_config
            else None,
            clock=clock,
            hooks=hooks,
        )

    return make


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
