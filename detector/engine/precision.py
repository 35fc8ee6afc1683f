"""The autocast precision of a run: `trainer.amp` = auto | off | bf16 | fp16.

`auto` (the default) takes bf16 where the machine's convolutions have a fast bf16 path and fp32
everywhere else:
- CUDA: bf16 when the device supports it natively (`torch.cuda.is_bf16_supported(
  including_emulation=False)`: Ampere and newer), otherwise fp32.
- CPU: bf16 when a 3×3 convolution, forward and backward, runs at least `FAST_SPEEDUP` times
  faster under bf16 autocast than in fp32 (`bf16_conv_speedup`, timed once per process: 0.35 s
  on a 2-core AVX2 CPU, where PyTorch falls back to its reference `slow_conv2d`, 15× slower than
  fp32). oneDNN's bf16 convolutions are fast with AMX (1.9 ms against 5.8 ms in fp32 on a
  2-core Xeon), slower than fp32 with AVX-512 BF16 alone (16.8 against 9.6 ms) and absent on AVX2;
  PyTorch's public capability string (`torch.backends.cpu.get_cpu_capability()`: AVX2,
  AVX512, …) does not tell these apart, so the decision is timed.

An explicit `bf16` is honoured, with a warning where it has no fast path; `fp16` needs CUDA.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

AMP_CHOICES = ("auto", "off", "bf16", "fp16")
DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
FAST_SPEEDUP = 1.1  # bf16 must beat fp32 by this factor on the probe to count as a fast path


@dataclass(frozen=True)
class Precision:
    """What a run computes its forward in: `amp` is "off" (fp32), "bf16" or "fp16"."""

    amp: str
    requested: str
    reason: str

    @property
    def dtype(self) -> torch.dtype | None:
        return DTYPES[self.amp]

    @property
    def name(self) -> str:
        return "fp32" if self.amp == "off" else self.amp

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def as_dict(self) -> dict:
        return {"used": self.name, "requested": self.requested, "reason": self.reason}


def resolve_precision(amp: str | bool, device: torch.device) -> Precision:
    """The precision `trainer.amp=amp` means on `device`; ValueError for an unknown value or fp16
    without CUDA. Logs the choice of `auto` and warns for a bf16 without a fast path."""
    if amp is False:  # YAML 1.1 reads an unquoted `off` as false
        amp = "off"
    if amp not in AMP_CHOICES:
        raise ValueError(f"trainer.amp must be one of {list(AMP_CHOICES)}, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("trainer.amp=fp16 needs CUDA; on CPU use trainer.amp=auto or bf16")
    if amp in ("off", "fp16"):
        return Precision(amp, amp, "as requested")
    fast, why = bf16_fast_path(device)
    if amp == "bf16":
        if not fast:
            log.warning(
                "trainer.amp=bf16 on a machine without a fast bf16 path (%s): the model will run much slower "
                "than in fp32; trainer.amp=auto chooses for the machine",
                why,
            )
        return Precision("bf16", "bf16", "as requested" + ("" if fast else f"; no fast path: {why}"))
    precision = Precision("bf16" if fast else "off", "auto", why)
    log.info("trainer.amp=auto: %s (%s)", precision.name, why)
    return precision


def bf16_fast_path(device: torch.device) -> tuple[bool, str]:
    """(whether bf16 autocast is fast on `device`, the evidence in words)."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return True, f"{torch.cuda.get_device_name(device)} supports bf16"
        return False, f"{torch.cuda.get_device_name(device)} has no native bf16"
    if device.type != "cpu":
        return False, f"no bf16 probe for device type {device.type}"
    speedup, fp32_ms, bf16_ms = bf16_conv_speedup()
    capability = torch.backends.cpu.get_cpu_capability()
    evidence = (
        f"CPU {capability}: a 3×3 conv forward + backward takes {bf16_ms:.1f} ms in bf16 against "
        f"{fp32_ms:.1f} ms in fp32"
    )
    return speedup >= FAST_SPEEDUP, evidence


@functools.cache
def bf16_conv_speedup(
    batch: int = 2, channels: int = 128, size: int = 32, repeats: int = 3
) -> tuple[float, float, float]:
    """(fp32 time / bf16 time, fp32 ms, bf16 ms) of a channels-last 3×3 convolution, forward and
    backward, on the CPU: the best of `repeats` after a warm-up call. A bf16 call slower than twice
    the fp32 time ends the probe early (the fallback is 10× slower or more)."""
    with torch.inference_mode(False), torch.enable_grad():  # callable from inference code too
        with torch.random.fork_rng(devices=[]):  # the probe leaves no trace in the run's random streams
            torch.default_generator.manual_seed(0)
            conv = nn.Conv2d(channels, channels, 3, padding=1).to(memory_format=torch.channels_last)
            x = torch.randn(batch, channels, size, size).contiguous(memory_format=torch.channels_last).requires_grad_()
        _conv_seconds(conv, x, None)
        fp32 = min(_conv_seconds(conv, x, None) for _ in range(repeats))
        _conv_seconds(conv, x, torch.bfloat16)
        bf16 = [_conv_seconds(conv, x, torch.bfloat16)]
        while len(bf16) < repeats and min(bf16) < 2 * fp32:
            bf16.append(_conv_seconds(conv, x, torch.bfloat16))
    return fp32 / min(bf16), 1e3 * fp32, 1e3 * min(bf16)


def _conv_seconds(conv: nn.Conv2d, x: torch.Tensor, dtype: torch.dtype | None) -> float:
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        y = conv(x)
    y.float().sum().backward()
    return time.perf_counter() - start
