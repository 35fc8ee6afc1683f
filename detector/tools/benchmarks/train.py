"""Our RetinaNet against torchvision's, side by side in one process (random init, no download).

    detector benchmark --task train [--device cpu|cuda] [--precision fp32 bf16|auto] [--sizes 512x512 800x1333]
                                    [--boxes 7 50 200] [--channels-last] [--compile]
                                    [--allocator both|system|jemalloc|mimalloc] [--json benchmark.json]

Both models: ResNet-50-FPN (frozen BatchNorm, stem and res2 frozen), P6 from C5, 4-conv
256-channel heads, 9 anchors of 32–512 px, the same number of classes, the same padded image
batch (multiples of 32), the same random boxes; SGD. The measurements interleave the two models
(A B A B …) after warm-up and report medians:

- training images/s: forward + loss + backward + SGD step (batch `--batch`), per image size and
  boxes per image; our step is the training loop's own forward (`detector.engine.trainer.forward_losses`:
  the model under autocast, the losses in float32);
- inference images/s including postprocessing, batch 1 and 8, at the first size;
- training memory: each model alone in a fresh process (built, two training steps), the peak
  above what the process held before the model was built — RSS high-water mark on CPU (glibc with
  a fixed 64 KiB mmap threshold, so that it is the live peak and repeats to 0.1 MiB),
  `max_memory_allocated` on CUDA (in one process the other model and the allocator's retained
  pages would blur it); with `--allocator both` the column comes from the system pass;
- the FLOP rate of our training step (`torch.utils.flop_counter`) against this machine's
  measured rate for a 3×3 convolution forward + backward at the same precision.

The report starts with the machine (CPU model and vector units — AVX2, AVX-512, AVX-512 BF16, AMX —,
cores, allocator, GPU). A bf16 precision that has no fast path here (`detector.engine.precision`:
oneDNN's bf16 kernels are fast only with AVX-512 BF16 or AMX; without them PyTorch's fallback is an order of
magnitude slower than fp32) is not timed: its rows say "no fast path" and why. `auto` stands for
the precision `trainer.amp=auto` chooses.

The allocator is chosen at process start, so `--allocator both` (the default) runs everything in a
child process under the allocator `make train` preloads (`detector.engine.allocator`: jemalloc where
the system has it, else the mimalloc wheel), and the training comparison again in a child with the
system allocator; the table gives both systems under both allocators, each ratio within one process,
and ours under the preloaded allocator against torchvision as users run it. The defaults
(512×512, 7 and 50 boxes, fp32 and bf16) take about 4 minutes on 2 CPU cores; the paper's size:
`--sizes 800x1333 512x512 --boxes 7 50 200`. On a GPU: `--device cuda --precision fp32 fp16 bf16`
(the allocator is CUDA's caching allocator there; `--allocator system`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.detection import RetinaNet as TorchvisionRetinaNet
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from detector.engine.allocator import SETTINGS, preload
from detector.engine.machine import describe_machine, machine_line
from detector.engine.precision import DTYPES as AMP_DTYPES
from detector.engine.precision import Precision, bf16_fast_path, resolve_precision
from detector.engine.trainer import forward_losses
from detector.losses import FocalLoss, RetinaNetCriterion, SmoothL1Loss
from detector.models import AnchorGenerator, ResNetBackbone, RetinaNet, RetinaNetFPN, RetinaNetHead
from detector.ops import BoxCoder, IoUMatcher
from detector.postprocess import RetinaNetPostProcessor
from detector.tools.benchmarks.timing import interleaved, median_seconds

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
NUM_CLASSES = 80


def ours():
    model = RetinaNet(
        NUM_CLASSES,
        ResNetBackbone(50, "frozen_bn", frozen_stages=2),
        lambda in_channels: RetinaNetFPN(in_channels, 256, p6_from="c5"),
        lambda **kw: RetinaNetHead(**kw, num_convs=4, channels=256),
        AnchorGenerator([32, 64, 128, 256, 512], 3, [0.5, 1.0, 2.0], [8, 16, 32, 64, 128]),
    )
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    criterion = RetinaNetCriterion(FocalLoss(0.25, 2.0), SmoothL1Loss(beta=0.11), IoUMatcher(0.5, 0.4), coder)
    return model, criterion, RetinaNetPostProcessor(coder)


def torchvision_model(height: int, width: int):
    backbone = resnet_fpn_backbone(
        backbone_name="resnet50",
        weights=None,
        norm_layer=FrozenBatchNorm2d,
        trainable_layers=3,
        returned_layers=[2, 3, 4],
        extra_blocks=LastLevelP6P7(2048, 256),
    )  # P6 from C5, like ours
    return TorchvisionRetinaNet(backbone, NUM_CLASSES, min_size=min(height, width), max_size=max(height, width))


def random_targets(batch: int, height: int, width: int, boxes: int, generator: torch.Generator) -> list[dict]:
    targets = []
    for _ in range(batch):
        size = torch.rand(boxes, 2, generator=generator) * 280 + 16
        corner = torch.rand(boxes, 2, generator=generator) * (torch.tensor([width, height]) - size)
        targets.append(
            {
                "boxes": torch.cat([corner, corner + size], 1),
                "labels": torch.randint(0, NUM_CLASSES, (boxes,), generator=generator),
            }
        )
    return targets


def memory_mib(device: torch.device, field: str = "VmRSS") -> float:
    """CPU: the process's resident memory (`VmRSS`) or its high-water mark (`VmHWM`); CUDA: the
    memory allocated by tensors now or at its peak."""
    if device.type == "cuda":
        return (
            torch.cuda.max_memory_allocated(device) if field == "VmHWM" else torch.cuda.memory_allocated(device)
        ) / 2**20
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith(field)).split()[1]) / 1024


def inputs(batch: int, height: int, width: int, boxes: int, device: torch.device, generator: torch.Generator):
    """A zero-padded image batch (multiples of 32) and its random targets."""
    padded = (-(-height // 32) * 32, -(-width // 32) * 32)
    images = torch.zeros(batch, 3, *padded, device=device)
    images[:, :, :height, :width] = torch.rand(batch, 3, height, width, generator=generator).to(device)
    targets = [{k: v.to(device) for k, v in t.items()} for t in random_targets(batch, height, width, boxes, generator)]
    return images, targets


def memory_probe(args) -> dict:
    """In this fresh process: one model, its optimizer and two training steps; the peak memory
    above what the process held before the model was built (torch, CUDA context)."""
    device = torch.device(args.device)
    height, width = (int(v) for v in args.sizes[0].split("x"))
    images, targets = inputs(args.batch, height, width, args.boxes[0], device, torch.Generator().manual_seed(0))
    before = memory_mib(device)
    contender = Contender(
        args.memory_probe, device, DTYPES[args.precision[0]], args.channels_last, args.compile, height, width
    )
    for _ in range(2):
        contender.train_step(images, targets)
    return {"peak_mib": round(memory_mib(device, "VmHWM") - before, 1)}


def child_command(args, precision: list[str], sizes: list[str], boxes: list[int], allocator: str) -> list[str]:
    """This benchmark with `args`' model settings and the given ones, as a child process (which prints no table)."""
    return [
        sys.executable,
        "-m",
        "detector.tools.benchmarks.train",
        "--device",
        args.device,
        "--precision",
        *precision,
        "--sizes",
        *sizes,
        "--boxes",
        *map(str, boxes),
        "--batch",
        str(args.batch),
        "--allocator",
        allocator,
        "--child",
        "--conv-map",
        args.conv_map,
        *["--channels-last"] * args.channels_last,
        *["--compile"] * args.compile,
    ]


def probed_memory_mib(args, name: str, precision: str, size: str, boxes: int) -> float:
    """The training memory of one model, measured in a child process of its own (in this process
    both models, their optimizers and the allocator's retained pages would blur it). Under glibc the
    child maps every block of 64 KiB or more on its own (a fixed `MALLOC_MMAP_THRESHOLD_`), so a
    freed tensor leaves the resident set at once and the high-water mark is the step's live peak;
    with glibc's adaptive threshold the same probe varied by ±100 MiB from run to run."""
    command = child_command(args, [precision], [size], [boxes], args.allocator) + ["--memory-probe", name]
    env = dict(os.environ)
    if not env.get("LD_PRELOAD"):  # glibc's own malloc
        env["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)
    result = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mib"]


class Contender:
    """One model's training step and inference, with the same inputs as the other contender."""

    def __init__(
        self,
        name: str,
        device: torch.device,
        dtype: torch.dtype | None,
        channels_last: bool,
        compile_model: bool,
        height: int,
        width: int,
    ):
        self.name, self.device = name, device
        amp = {value: key for key, value in AMP_DTYPES.items()}[dtype]  # "off", "bf16" or "fp16"
        self.precision = Precision(amp, amp, "the benchmark's row")
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if name == "ours":
            self.model, self.criterion, self.postprocess = ours()
            self.criterion.to(device)
        else:
            self.model = torchvision_model(height, width)
        self.model.to(device, memory_format=self.memory_format)
        self.runner = torch.compile(self.model) if compile_model else self.model
        self.optimizer = torch.optim.SGD([p for p in self.model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

    def autocast(self):
        return self.precision.autocast(self.device)

    def train_step(self, images: torch.Tensor, targets: list[dict]) -> None:
        self.model.train()
        if self.name == "ours":  # the training loop's own forward (Trainer.step calls it too)
            images = images.contiguous(memory_format=self.memory_format)
            loss, _ = forward_losses(self.runner, self.criterion, images, targets, self.precision)
        else:
            with self.autocast():
                loss = sum(self.runner(list(images), targets).values())  # classification + bbox_regression
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    @torch.no_grad()
    def infer(self, images: torch.Tensor) -> list[dict]:
        self.model.eval()
        with self.autocast():
            if self.name == "ours":
                predictions = self.runner(images.contiguous(memory_format=self.memory_format))
                return self.postprocess(predictions, [tuple(images.shape[-2:])] * len(images))
            return self.runner(list(images))


def conv_peak_flops(
    device: torch.device, dtype: torch.dtype | None, repeats: int = 5, height: int = 100, width: int = 168
) -> float:
    """FLOP/s of a 3×3, 256→256 convolution forward + backward on a 2 × height × width map (by
    default 100 × 168, P3 at 800 px)."""
    conv = torch.nn.Conv2d(256, 256, 3, padding=1).to(device, memory_format=torch.channels_last)
    x = torch.randn(2, 256, height, width, device=device).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()

    def step():
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            y = conv(x)
        y.float().sum().backward()

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / median_seconds(step, repeats, 1, device)


def operator_profile(step, rows: int = 12) -> dict:
    """Where one call of `step` spends its time: self CPU time by operator (`torch.profiler`), with
    the share of convolution forward + backward."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        step()
    events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    convolution = sum(e.self_cpu_time_total for e in events if "conv" in e.key)
    return {
        "step_ms": round(total / 1000, 1),
        "convolution_share": round(convolution / total, 3),
        "top": [
            {
                "op": e.key,
                "ms": round(e.self_cpu_time_total / 1000, 1),
                "calls": e.count,
                "share": round(e.self_cpu_time_total / total, 3),
            }
            for e in events[:rows]
        ],
    }


def step_flops(contender: Contender, images, targets) -> int:
    with FlopCounterMode(display=False) as counter:
        contender.train_step(images, targets)
    return counter.get_total_flops()


def run(args) -> dict:
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    report = {
        "machine": {
            **describe_machine(),
            "platform": platform.platform(),
            "ld_preload": os.environ.get("LD_PRELOAD", ""),
        },
        "settings": vars(args),
        "train": [],
        "inference": [],
        "flops": [],
        "profile": [],
    }
    for precision in args.precision:
        dtype = DTYPES[precision]
        for size in args.sizes:
            height, width = (int(v) for v in size.split("x"))
            contenders = [
                Contender(name, device, dtype, args.channels_last, args.compile, height, width)
                for name in ("ours", "torchvision")
            ]
            for boxes in args.boxes:
                images, targets = inputs(args.batch, height, width, boxes, device, generator)
                seconds = interleaved(
                    {c.name: partial(c.train_step, images, targets) for c in contenders},
                    args.repeats,
                    args.warmup,
                    device,
                )
                memory = {
                    c.name: None if args.skip_memory else probed_memory_mib(args, c.name, precision, size, boxes)
                    for c in contenders
                }
                row = {
                    "precision": precision,
                    "size": size,
                    "boxes": boxes,
                    "batch": args.batch,
                    **{f"{name}_images_per_s": round(args.batch / s, 3) for name, s in seconds.items()},
                    **{f"{name}_peak_mib": m for name, m in memory.items()},
                }
                row["speedup"] = round(row["ours_images_per_s"] / row["torchvision_images_per_s"], 3)
                row["memory_ratio"] = None if args.skip_memory else round(memory["ours"] / memory["torchvision"], 3)
                report["train"].append(row)
                print(json.dumps(row), flush=True)
            if size == args.sizes[0] and not args.train_only:
                for batch in (1, 8):
                    batch_images = images[:1].expand(batch, -1, -1, -1).contiguous()
                    seconds = interleaved(
                        {c.name: partial(c.infer, batch_images) for c in contenders},
                        max(args.repeats // 2, 2),
                        1,
                        device,
                    )
                    row = {
                        "precision": precision,
                        "size": size,
                        "batch": batch,
                        **{f"{n}_images_per_s": round(batch / s, 3) for n, s in seconds.items()},
                    }
                    row["speedup"] = round(row["ours_images_per_s"] / row["torchvision_images_per_s"], 3)
                    report["inference"].append(row)
                    print(json.dumps(row), flush=True)
                images, targets = inputs(args.batch, height, width, args.boxes[0], device, generator)
                flops = step_flops(contenders[0], images, targets)
                seconds = median_seconds(partial(contenders[0].train_step, images, targets), args.repeats, 0, device)
                peak = conv_peak_flops(device, dtype, 5, *(int(v) for v in args.conv_map.split("x")))
                row = {
                    "precision": precision,
                    "size": size,
                    "step_gflop": round(flops / 1e9, 1),
                    "achieved_gflops": round(flops / seconds / 1e9, 1),
                    "conv_peak_gflops": round(peak / 1e9, 1),
                    "fraction_of_peak": round(flops / seconds / peak, 3),
                }
                report["flops"].append(row)
                print(json.dumps(row), flush=True)
                if args.profile:
                    eight = images[:1].expand(8, -1, -1, -1).contiguous()
                    steps = {
                        "training step": (Contender.train_step, images, targets),
                        "inference, batch 8": (Contender.infer, eight),
                    }
                    for what, (method, *step_inputs) in steps.items():
                        for contender in contenders:
                            profile = {
                                "precision": precision,
                                "size": size,
                                "model": contender.name,
                                "step": what,
                                **operator_profile(partial(method, contender, *step_inputs)),
                            }
                            report["profile"].append(profile)
                            print(json.dumps(profile), flush=True)
    return report


def table(report: dict, system: dict | None = None) -> str:
    """Markdown tables. With `system` (the training rows again, in a process with the system
    allocator): each allocator's same-process speed-up, ours under the preloaded allocator against
    torchvision under the system allocator (what a user of either would run), and the memory from
    the system pass (jemalloc and mimalloc keep freed pages, so RSS under them does not show a step's
    peak)."""
    lines = [f"machine: {machine_line(report['machine'])}", ""]
    lines += [f"{s['precision']}: no fast path, not timed ({s['reason']})" for s in report.get("not_timed", [])]
    if report.get("not_timed"):
        lines.append("")
    if system:
        fast = report["machine"]["allocator"]
        baseline = {(r["precision"], r["size"], r["boxes"]): r for r in system["train"]}
        lines += [
            "training (images/s; memory: peak MiB of model + optimizer + step, each model alone, system allocator)",
            f"| precision | size | boxes | ours, {fast} | tv, {fast} | speed-up | tv, system malloc | ours "
            f"{fast} / tv system | ours, system malloc | speed-up, system malloc | memory ours / tv |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in report["train"]:
            b = baseline[(r["precision"], r["size"], r["boxes"])]
            lines.append(
                f"| {r['precision']} | {r['size']} | {r['boxes']} | {r['ours_images_per_s']:.3f} | "
                f"{r['torchvision_images_per_s']:.3f} | {r['speedup']:.2f}× | {b['torchvision_images_per_s']:.3f} |"
                f" {r['ours_images_per_s'] / b['torchvision_images_per_s']:.2f}× | {b['ours_images_per_s']:.3f} |"
                f" {b['speedup']:.2f}× | {b['ours_peak_mib']:.0f} / {b['torchvision_peak_mib']:.0f} |"
            )
    else:
        lines += [
            "training (images/s; memory: peak MiB of model + optimizer + step, each model alone)",
            "| precision | size | boxes | ours | torchvision | speed-up | memory ours / tv |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in report["train"]:
            memory = (
                "–"  # not measured (--skip-memory)
                if r["ours_peak_mib"] is None
                else f"{r['ours_peak_mib']:.0f} / {r['torchvision_peak_mib']:.0f}"
            )
            lines.append(
                f"| {r['precision']} | {r['size']} | {r['boxes']} | {r['ours_images_per_s']:.3f} | "
                f"{r['torchvision_images_per_s']:.3f} | {r['speedup']:.2f}× | {memory} |"
            )
    lines += [
        "",
        "inference incl. postprocessing (images/s)",
        "| precision | size | batch | ours | torchvision | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["inference"]:
        lines.append(
            f"| {r['precision']} | {r['size']} | {r['batch']} | {r['ours_images_per_s']:.3f} | "
            f"{r['torchvision_images_per_s']:.3f} | {r['speedup']:.2f}× |"
        )
    lines += [
        "",
        "FLOP rate of our training step",
        "| precision | size | GFLOP/step | achieved GFLOP/s | 3×3 conv fwd+bwd GFLOP/s | fraction |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["flops"]:
        lines.append(
            f"| {r['precision']} | {r['size']} | {r['step_gflop']} | {r['achieved_gflops']} | "
            f"{r['conv_peak_gflops']} | {100 * r['fraction_of_peak']:.0f} % |"
        )
    for p in report.get("profile", []):
        lines += [
            "",
            f"profile of one {p.get('step', 'training step')}: {p['model']}, {p['precision']}, {p['size']} "
            f"({p['step_ms']} ms of operator self time, {100 * p['convolution_share']:.0f} % in convolutions)",
            "| operator | ms | calls | share |",
            "|---|---|---|---|",
        ]
        lines += [f"| {e['op']} | {e['ms']} | {e['calls']} | {100 * e['share']:.1f} % |" for e in p["top"]]
    return "\n".join(lines)


def child_report(args, allocator: str, train_only: bool, skip_memory: bool = False) -> dict:
    """Run this benchmark with the same settings in a fresh process with `allocator`; its JSON report."""
    settings = {key for _, chosen in filter(None, map(preload, SETTINGS)) for key in chosen}
    env = {k: v for k, v in os.environ.items() if k not in settings}
    if allocator != "system":
        env.update(preload(allocator)[1])
    command = child_command(args, args.precision, args.sizes, args.boxes, allocator)
    command += [
        "--warmup",
        str(args.warmup),
        "--repeats",
        str(args.repeats),
        *["--train-only"] * train_only,
        *["--profile"] * args.profile,
        *["--skip-memory"] * skip_memory,
    ]
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "report.json"
        subprocess.run(command + ["--json", str(out)], env=env, check=True)
        return json.loads(out.read_text())


def untimed_precisions(args) -> list[dict]:
    """Resolve `auto` in `args.precision` and take out a bf16 without a fast path here; return
    what was taken out and why."""
    device = torch.device(args.device)
    resolved = [resolve_precision("auto", device).name if p == "auto" else p for p in args.precision]
    args.precision = list(dict.fromkeys(resolved))
    not_timed = []
    if "bf16" in args.precision:
        fast, why = bf16_fast_path(device)
        if not fast:
            args.precision.remove("bf16")
            not_timed.append({"precision": "bf16", "reason": why})
            print(f"bf16: no fast path on this machine, not timed ({why})", flush=True)
    return not_timed


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=[*DTYPES, "auto"])
    parser.add_argument("--sizes", nargs="+", default=["512x512"])
    parser.add_argument("--boxes", nargs="+", type=int, default=[7, 50])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--conv-map", default="100x168", help="HxW of the reference 3×3 convolution's map")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="where a training step's and an inference batch's time goes, per operator",
    )
    parser.add_argument(
        "--allocator",
        choices=["both", "system", *SETTINGS],
        default="both",
        help="both: the allocator make train preloads for everything, and the training rows again with the "
        "system allocator",
    )
    parser.add_argument("--train-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # a parent prints the table
    parser.add_argument("--memory-probe", choices=["ours", "torchvision"], help=argparse.SUPPRESS)
    parser.add_argument("--skip-memory", action="store_true", help=argparse.SUPPRESS)  # the other pass measures it
    parser.add_argument("--json", type=Path, default=Path("benchmark.json"))
    args = parser.parse_args(argv)
    if args.precision.count("fp16") and args.device != "cuda":
        parser.error("fp16 autocast needs --device cuda; on CPU use bf16")
    if args.allocator in SETTINGS and args.device == "cpu" and preload(args.allocator) is None:
        parser.error(f"{args.allocator} is not installed (detector/engine/allocator.py); use --allocator system")
    fast = preload()
    if args.allocator == "both" and args.device == "cpu" and fast is None:
        print("neither jemalloc nor mimalloc is installed: measuring with the system allocator only", flush=True)
        args.allocator = "system"
    if args.memory_probe:
        print(json.dumps(memory_probe(args)))
        return
    not_timed = [] if args.child else untimed_precisions(args)
    if not args.precision:
        parser.error(f"nothing to time: {not_timed}")
    if args.allocator == "both" and args.device == "cpu":
        print(f"{fast[0]} (everything), then the system allocator (training rows):", flush=True)
        report = child_report(args, fast[0], train_only=False, skip_memory=True)
        report["system_allocator"] = child_report(args, "system", train_only=True)
        report["settings"] = vars(args)  # this invocation's, not the children's
    elif args.allocator in SETTINGS and args.allocator not in os.environ.get("LD_PRELOAD", ""):
        report = child_report(args, args.allocator, train_only=args.train_only)
        report["settings"] = vars(args)
    else:
        report = run(args)
    report["not_timed"] = not_timed
    args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if not args.child:
        print("\n" + table(report, report.get("system_allocator")) + f"\n\nwrote {args.json}")


if __name__ == "__main__":
    main()
