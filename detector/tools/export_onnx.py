"""Export a checkpoint's network to ONNX with a dynamic batch and image size, and check it with
onnxruntime against PyTorch.

    detector export-onnx CHECKPOINT [--out model.onnx] [--check-sizes 256x384 384x256]

The graph maps a normalised, padded image batch [B, 3, H, W] (H and W multiples of
`data.size_divisibility`, as the data pipeline pads them) to the head's outputs: "cls_logits" [B, A, K]
and "box_deltas" [B, A, 4], or "box_distribution" [B, A, 4, n + 1] for a GFL head. Anchors depend only
on the image size and decoding plus NMS are not a network: `detector.postprocess` runs them on the
graph's outputs (the check does exactly that).
The check runs random images of each --check-sizes through both, and compares the outputs
(tolerance 1e-4) and the final detections.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from torch import nn

from detector.engine.inference import load_for_inference


class Network(nn.Module):
    """The model without its anchors: images → (cls_logits, the box output the head names)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone, self.fpn, self.head = model.backbone, model.fpn, model.head
        self.output_names = output_names(model)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self.head(self.fpn(self.backbone(images)))
        return tuple(outputs[name] for name in self.output_names)


def output_names(model: nn.Module) -> list[str]:
    return ["cls_logits", model.head.box_output]


def load(checkpoint: Path):
    loaded = load_for_inference(checkpoint)
    return loaded.model, loaded.postprocessor, int(loaded.config.data.get("size_divisibility", 128))


def export(model: nn.Module, out: Path, divisibility: int) -> None:
    batch, rows, columns = (
        torch.export.Dim("batch", max=64),
        torch.export.Dim("rows", max=64),
        torch.export.Dim("columns", max=64),
    )
    example = torch.zeros(2, 3, 2 * divisibility, 3 * divisibility)
    shapes = {"images": {0: batch, 2: divisibility * rows, 3: divisibility * columns}}
    network = Network(model).eval()
    program = torch.onnx.export(
        network,
        (example,),
        dynamo=True,
        input_names=["images"],
        output_names=network.output_names,
        dynamic_shapes=shapes,
        external_data=False,
    )
    program.save(str(out))


def check(model: nn.Module, postprocess, out: Path, sizes: list[tuple[int, int]]) -> list[str]:
    """Compare onnxruntime with PyTorch on random images of each size; returns one line per size."""
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    lines = []
    for height, width in sizes:
        images = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(height * 7 + width))
        with torch.no_grad():
            expected = model(images)
        got = dict(zip(output_names(model), session.run(None, {"images": images.numpy()})))
        for name, value in got.items():
            difference = float(np.abs(value - expected[name].numpy()).max())
            if difference > 1e-4:
                raise SystemExit(f"{name} at {height}×{width}: onnxruntime differs from PyTorch by {difference:.2e}")
        from_onnx = {**expected, **{name: torch.from_numpy(value) for name, value in got.items()}}
        reference = postprocess(expected, [(height, width)] * 2)
        detections = postprocess(from_onnx, [(height, width)] * 2)
        for ours, theirs in zip(detections, reference):
            if (
                len(ours["boxes"]) != len(theirs["boxes"])
                or not torch.equal(ours["labels"], theirs["labels"])
                or not torch.allclose(ours["boxes"], theirs["boxes"], atol=1e-3)
                or not torch.allclose(ours["scores"], theirs["scores"], atol=1e-4)
            ):
                raise SystemExit(f"detections at {height}×{width} differ between onnxruntime and PyTorch")
        lines.append(
            f"{height}×{width}: outputs within 1e-4, {sum(len(d['boxes']) for d in detections)} detections identical"
        )
    return lines


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", type=Path, default=Path("model.onnx"))
    parser.add_argument("--check-sizes", nargs="+", default=None, help="HxW sizes to check (default: two)")
    args = parser.parse_args(argv)
    model, postprocess, divisibility = load(args.checkpoint)
    export(model, args.out, divisibility)
    sizes = (
        [tuple(int(v) for v in s.split("x")) for s in args.check_sizes]
        if args.check_sizes
        else [(2 * divisibility, 3 * divisibility), (3 * divisibility, 2 * divisibility)]
    )
    for line in check(model, postprocess, args.out, sizes):
        print(line)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
