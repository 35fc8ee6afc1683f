"""The allocator the make targets preload: found, configured, and really loaded by a child process."""

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from detector.engine import allocator

ROOT = Path(__file__).resolve().parents[1]


WHEEL = pytest.mark.skipif(
    not (sys.platform == "linux" and platform.machine() == "x86_64"),
    reason="the cmeel-mimalloc wheel is a dependency on x86_64 Linux only",
)


@WHEEL
def test_the_first_installed_allocator_is_chosen_with_its_settings():
    chosen = allocator.preload()
    assert chosen is not None, "cmeel-mimalloc is a dependency: mimalloc at least must be found"
    name, env = chosen
    assert name == ("jemalloc" if allocator.library("jemalloc") else "mimalloc")
    assert Path(env["LD_PRELOAD"]).is_file() and env == {"LD_PRELOAD": env["LD_PRELOAD"], **allocator.SETTINGS[name]}
    assert allocator.preload("mimalloc")[1]["MIMALLOC_PURGE_DELAY"] == "-1"
    with pytest.raises(ValueError, match=r"unknown allocator 'tcmalloc'; choose one of \['jemalloc', 'mimalloc'\]"):
        allocator.library("tcmalloc")


@WHEEL
def test_a_child_process_runs_on_the_preloaded_mimalloc(capsys):
    allocator.main(["mimalloc"])
    assignments = dict(item.split("=", 1) for item in capsys.readouterr().out.split())
    maps = subprocess.run(
        [sys.executable, "-c", "print(open('/proc/self/maps').read())"],
        env={**os.environ, **assignments},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "libmimalloc.so" in maps and assignments["LD_PRELOAD"] == allocator.library("mimalloc")


@WHEEL
@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_train_preloads_it():
    recipe = subprocess.run(["make", "-n", "train"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    name, env = allocator.preload()
    line = next(line for line in recipe.splitlines() if "train.py" in line)
    assert line.startswith(" ".join(f"{key}={value}" for key, value in env.items())), line
