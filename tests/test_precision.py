"""trainer.amp=auto chooses by what the machine can do; the machine is described in every report."""

import argparse
import json
import logging

import pytest
import torch

from detector.engine import precision as precision_module
from detector.engine.machine import cpu_flags, describe_machine, machine_line, vector_kind
from detector.engine.precision import Precision, bf16_conv_speedup, resolve_precision
from detector.tools.benchmarks import train as benchmark

CPU = torch.device("cpu")


def probe_gives(monkeypatch, speedup: float) -> None:
    """The CPU probe, mocked: bf16 `speedup` times faster than fp32."""
    monkeypatch.setattr(precision_module, "bf16_conv_speedup", lambda: (speedup, 10.0, 10.0 / speedup))


@pytest.mark.parametrize(("speedup", "chosen"), [(2.3, "bf16"), (0.072, "off"), (1.0, "off")])
def test_auto_on_cpu_takes_bf16_only_where_its_convolution_is_faster(monkeypatch, caplog, speedup, chosen):
    probe_gives(monkeypatch, speedup)
    with caplog.at_level(logging.INFO, logger="detector.engine.precision"):
        chosen_precision = resolve_precision("auto", CPU)
    assert chosen_precision.amp == chosen and chosen_precision.requested == "auto"
    assert chosen_precision.dtype == (torch.bfloat16 if chosen == "bf16" else None)
    assert f"{10.0 / speedup:.1f} ms in bf16 against 10.0 ms in fp32" in chosen_precision.reason
    assert f"trainer.amp=auto: {chosen_precision.name}" in caplog.text  # the choice and its reason are logged
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(("native", "chosen"), [(True, "bf16"), (False, "off")])
def test_auto_on_cuda_takes_bf16_where_the_device_supports_it_natively(monkeypatch, native, chosen):
    asked = {}

    def is_bf16_supported(including_emulation=True):
        asked["including_emulation"] = including_emulation
        return native

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100" if not native else "H100")
    monkeypatch.setattr(precision_module, "bf16_conv_speedup", lambda: pytest.fail("the CPU probe ran for CUDA"))
    assert resolve_precision("auto", torch.device("cuda")).amp == chosen
    assert asked == {"including_emulation": False}  # emulated bf16 (pre-Ampere) is slow


def test_explicit_bf16_without_a_fast_path_is_kept_and_warns(monkeypatch, caplog):
    probe_gives(monkeypatch, 0.072)
    with caplog.at_level(logging.WARNING, logger="detector.engine.precision"):
        chosen = resolve_precision("bf16", CPU)
    assert chosen.amp == "bf16" and chosen.dtype == torch.bfloat16
    assert "without a fast bf16 path" in caplog.text and "trainer.amp=auto" in caplog.text
    assert "no fast path" in chosen.reason


def test_explicit_bf16_with_a_fast_path_is_silent(monkeypatch, caplog):
    probe_gives(monkeypatch, 2.0)
    with caplog.at_level(logging.WARNING, logger="detector.engine.precision"):
        assert resolve_precision("bf16", CPU).amp == "bf16"
    assert caplog.text == ""


def test_off_and_fp16_need_no_probe_and_fp16_needs_cuda(monkeypatch):
    monkeypatch.setattr(precision_module, "bf16_conv_speedup", lambda: pytest.fail("probed"))
    assert resolve_precision("off", CPU) == Precision("off", "off", "as requested")
    assert resolve_precision(False, CPU).amp == "off"  # YAML's unquoted off
    assert resolve_precision("fp16", torch.device("cuda")).dtype == torch.float16
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ValueError, match=r"one of \['auto', 'off', 'bf16', 'fp16'\]"):
        resolve_precision("fp32", CPU)


def test_the_real_probe_times_both_precisions_quickly_and_leaves_the_random_streams_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    speedup, fp32_ms, bf16_ms = bf16_conv_speedup.__wrapped__(repeats=2)
    assert torch.equal(torch.get_rng_state(), state)
    assert fp32_ms > 0 and bf16_ms > 0 and speedup == pytest.approx(fp32_ms / bf16_ms)
    assert fp32_ms < 1000 and bf16_ms < 5000  # a bounded start-up cost on either kind of CPU
    for context in (torch.no_grad, torch.inference_mode):  # predict and evaluation resolve inside these
        with context():
            assert bf16_conv_speedup.__wrapped__(repeats=1)[0] > 0


@pytest.mark.parametrize(("speedup", "used"), [(2.3, "bf16"), (0.072, "fp32")])
def test_trainer_runs_and_records_the_resolved_precision(monkeypatch, smoke_trainer, tmp_path, speedup, used):
    probe_gives(monkeypatch, speedup)
    trainer = smoke_trainer(amp="auto", max_iters=1)
    seen = {}
    trainer.model.head.register_forward_hook(lambda module, args, output: seen.update(head=output["cls_logits"].dtype))
    trainer.train()
    assert seen["head"] == (torch.bfloat16 if used == "bf16" else torch.float32)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["precision"]["used"] == used and metrics["precision"]["requested"] == "auto"
    assert "ms in bf16" in metrics["precision"]["reason"]
    assert metrics["machine"]["cpu_kind"] in ("AVX2", "AVX-512", "AVX-512 BF16", "AMX", "other")


CPUINFO = """processor\t: 0
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse2 avx2 fma avx512f avx512bw avx512_bf16 avx512_vnni
processor\t: 1
model name\t: AMD EPYC 9R14
"""


def test_cpu_flags_and_kind_come_from_cpuinfo():
    assert cpu_flags(CPUINFO) == ("AMD EPYC 9R14", "avx2 avx512f avx512_bf16")
    assert vector_kind("avx2 avx512f avx512_bf16") == "AVX-512 BF16"
    assert vector_kind("avx2 avx512f avx512_bf16 amx_bf16") == "AMX"
    assert vector_kind("avx2 avx512f") == "AVX-512"
    assert vector_kind("avx2") == "AVX2" and vector_kind("") == "other"
    machine = describe_machine()
    assert machine["cores"] >= 1 and machine["torch"] == torch.__version__
    assert machine["cpu_kind"] in machine_line(machine)


def test_benchmark_does_not_time_a_bf16_without_a_fast_path(monkeypatch):
    monkeypatch.setattr(benchmark, "bf16_fast_path", lambda device: (False, "CPU AVX2: 700 ms in bf16 against 50"))
    probe_gives(monkeypatch, 0.07)
    args = argparse.Namespace(device="cpu", precision=["fp32", "bf16"])
    assert benchmark.untimed_precisions(args) == [
        {"precision": "bf16", "reason": "CPU AVX2: 700 ms in bf16 against 50"}
    ]
    assert args.precision == ["fp32"]
    args = argparse.Namespace(device="cpu", precision=["auto", "fp32"])  # auto is fp32 here: timed once
    assert benchmark.untimed_precisions(args) == [] and args.precision == ["fp32"]
    monkeypatch.setattr(benchmark, "bf16_fast_path", lambda device: (True, "fast"))
    args = argparse.Namespace(device="cpu", precision=["fp32", "bf16"])
    assert benchmark.untimed_precisions(args) == [] and args.precision == ["fp32", "bf16"]
