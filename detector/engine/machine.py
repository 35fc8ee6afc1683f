"""Which machine a figure came from: CPU model and vector units, cores, allocator, accelerator.

Every timing in this project depends on it: with bf16 matrix units (AMX or AVX-512 BF16) bf16
convolutions are about 2× faster than fp32, with AVX2 only they are an order of magnitude slower.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

VECTOR_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")  # /proc/cpuinfo names, weakest first
ALLOCATORS = ("jemalloc", "mimalloc", "tcmalloc")


def cpu_flags(cpuinfo: str) -> tuple[str, str]:
    """(model name, the VECTOR_FLAGS it has, space-separated) from the text of /proc/cpuinfo."""
    fields = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", fields.get("Features", "")).split())
    return fields.get("model name", ""), " ".join(f for f in VECTOR_FLAGS if f in flags)


def vector_kind(flags: str) -> str:
    """The strongest of AMX, AVX-512 BF16, AVX-512 and AVX2 in `flags`, or "other"."""
    names = {"amx_bf16": "AMX", "avx512_bf16": "AVX-512 BF16", "avx512f": "AVX-512", "avx2": "AVX2"}
    present = flags.split()
    return next((names[f] for f in reversed(VECTOR_FLAGS) if f in present), "other")


def describe_machine() -> dict:
    """A JSON-ready description of this process's machine."""
    cpuinfo = Path("/proc/cpuinfo")
    model, flags = cpu_flags(cpuinfo.read_text()) if cpuinfo.exists() else ("", "")
    preload = os.environ.get("LD_PRELOAD", "")
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "cpu_kind": vector_kind(flags),
        "cpu_flags": flags,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "allocator": next((name for name in ALLOCATORS if name in preload), "system"),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
    }


def machine_line(machine: dict) -> str:
    """One line for logs and report headers."""
    accelerator = f", GPU {machine['cuda']}" if machine["cuda"] else ""
    return (
        f"{machine['cpu']} ({machine['cpu_kind']}), {machine['cores']} cores, {machine['torch_threads']} torch "
        f"threads, {machine['allocator']} allocator, torch {machine['torch']}{accelerator}"
    )
