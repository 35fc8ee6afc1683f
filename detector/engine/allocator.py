"""The allocator that `python train.py`, `python evaluate.py` and the make targets preload. glibc
malloc gives every large tensor back to the system when it is freed, and page-faults it in again at
the next step: a training step at 800×1333 ran 1.37× faster under mimalloc on a 2-core AVX2 CPU
(docs/speed.md).

The first one installed wins:
- jemalloc, where the system has it (Debian: libjemalloc2), never decaying dirty pages;
- mimalloc, from the cmeel-mimalloc wheel (a dependency, so `make train` always has it), never
  purging freed pages and allowed large OS pages.

    python -m detector.engine.allocator [jemalloc|mimalloc]   # prints LD_PRELOAD=… and its settings

The assignments print on one line, for `env` or a Makefile; nothing prints when no allocator is found.
`DETECTOR_ALLOCATOR=system|jemalloc|mimalloc` chooses for the entry points (`reexec_preloaded`) and, without an
argument, for this command (the make targets).
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

JEMALLOC_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/libjemalloc.so.2",
)
SETTINGS = {
    "jemalloc": {"MALLOC_CONF": "oversize_threshold:1,background_thread:true,dirty_decay_ms:-1,muzzy_decay_ms:-1"},
    "mimalloc": {"MIMALLOC_PURGE_DELAY": "-1", "MIMALLOC_ALLOW_LARGE_OS_PAGES": "1"},
}


def library(name: str) -> str | None:
    """The shared library of `name` ("jemalloc" or "mimalloc"), or None where it is not installed."""
    if name == "jemalloc":
        candidates = [Path(path) for path in JEMALLOC_PATHS]
    elif name == "mimalloc":
        candidates = [Path(sysconfig.get_paths()["purelib"]) / "cmeel.prefix" / "lib" / "libmimalloc.so"]
    else:
        raise ValueError(f"unknown allocator {name!r}; choose one of {sorted(SETTINGS)} (or system: glibc's)")
    return next((str(path) for path in candidates if path.exists()), None)


def preload(name: str | None = None) -> tuple[str, dict[str, str]] | None:
    """(name, environment) that preloads `name`, or by default the first installed of jemalloc and
    mimalloc; None where it is not installed."""
    for candidate in [name] if name else list(SETTINGS):
        path = library(candidate)
        if path is not None:
            return candidate, {"LD_PRELOAD": path, **SETTINGS[candidate]}
    return None


def reexec_preloaded() -> None:
    """Restart this process (same interpreter, flags and arguments, same PID) with the allocator
    preloaded: `DETECTOR_ALLOCATOR`'s, by default the first installed. Nothing happens where
    LD_PRELOAD is already set (the user's, or this restart's), where DETECTOR_ALLOCATOR=system, or
    where no allocator is installed. Call it before anything heavy is imported."""
    choice = os.environ.get("DETECTOR_ALLOCATOR") or None
    if os.environ.get("LD_PRELOAD") or choice == "system" or not sys.platform.startswith("linux"):
        return
    chosen = preload(choice)
    if chosen is None and choice is not None:
        raise RuntimeError(f"DETECTOR_ALLOCATOR={choice}: {choice} is not installed; unset it or set it to system")
    if chosen is not None:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **chosen[1]})


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    name = argv[0] if argv else os.environ.get("DETECTOR_ALLOCATOR") or None
    if name == "system":
        return
    chosen = preload(name)
    if chosen is not None:
        print(" ".join(f"{key}={value}" for key, value in chosen[1].items()))


if __name__ == "__main__":
    main()
