"""The allocator that the entry points and make targets preload: found, configured, and really loaded."""

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


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({}, "first"),
        ({"DETECTOR_ALLOCATOR": "mimalloc"}, "mimalloc"),
        ({"DETECTOR_ALLOCATOR": "system"}, None),
        ({"LD_PRELOAD": "/usr/lib/libasan.so"}, None),  # the user's preload is kept
    ],
)
@WHEEL
def test_the_entry_points_restart_with_the_allocator_unless_told_otherwise(monkeypatch, environment, expected):
    for key in ("LD_PRELOAD", "DETECTOR_ALLOCATOR"):
        monkeypatch.delenv(key, raising=False)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    restarts = []
    monkeypatch.setattr(os, "execve", lambda path, argv, env: restarts.append((path, argv, env)))
    allocator.reexec_preloaded()
    if expected is None:
        assert restarts == []
        return
    name, preload_env = allocator.preload(None if expected == "first" else expected)
    [(path, argv, env)] = restarts
    assert path == argv[0] == sys.executable and argv[1:] == sys.orig_argv[1:]  # same interpreter, flags, arguments
    assert env == {**os.environ, **preload_env}


def test_an_allocator_asked_for_by_name_must_be_installed(monkeypatch):
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.setenv("DETECTOR_ALLOCATOR", "jemalloc")
    monkeypatch.setattr(allocator, "JEMALLOC_PATHS", ("/nonexistent/libjemalloc.so.2",))
    monkeypatch.setattr(os, "execve", lambda *args: pytest.fail("restarted without the allocator asked for"))
    with pytest.raises(RuntimeError, match="DETECTOR_ALLOCATOR=jemalloc: jemalloc is not installed"):
        allocator.reexec_preloaded()
    monkeypatch.setenv("DETECTOR_ALLOCATOR", "tcmalloc")
    with pytest.raises(ValueError, match=r"unknown allocator 'tcmalloc'.*or system"):
        allocator.reexec_preloaded()


def test_the_make_targets_keep_glibc_when_told(monkeypatch, capsys):
    monkeypatch.setenv("DETECTOR_ALLOCATOR", "system")
    allocator.main([])
    assert capsys.readouterr().out == ""


@WHEEL
def test_a_restarted_entry_point_runs_once_on_the_allocator_with_its_arguments(tmp_path):
    entry = tmp_path / "entry.py"
    entry.write_text(
        "import os, sys\n"
        "from detector.engine.allocator import reexec_preloaded\n"
        "if __name__ == '__main__':\n"
        "    print('start', os.getpid(), flush=True)\n"
        "    reexec_preloaded()\n"
        "    maps = open('/proc/self/maps').read()\n"
        "    print('libmimalloc.so' in maps or 'libjemalloc' in maps)\n"
        "    print(sys.argv[1:])\n"
    )
    env = {key: value for key, value in os.environ.items() if key not in ("LD_PRELOAD", "DETECTOR_ALLOCATOR")}
    result = subprocess.run(
        [sys.executable, "-X", "utf8", str(entry), "a=1", "b"], env=env, capture_output=True, text=True, check=True
    )
    first, second, loaded, arguments = result.stdout.splitlines()
    assert first == second and first.startswith("start ")  # restarted in place: the same PID, twice through
    assert loaded == "True" and arguments == "['a=1', 'b']"
