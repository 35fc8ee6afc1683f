"""Pretrain a ResNet body on the glyph generator's classification task: the CPU protocol's ImageNet.

    detector pretrain-backbone [--depth 18] [--steps 1400] [--batch-size 128] [--crop-size 48]
        [--lr 0.1] [--warmup-steps 50] [--seed 0] [--out .cache/pretrained/resnet18-glyphs.pth]

Writes a torchvision ResNet state dict (train with model.backbone.weights_path=OUT) and OUT.json
with the settings, the held-out accuracy and the training time. Deterministic from --seed; a
second run with the same settings returns at once with the cached file.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from detector.engine.pretrain import pretrain_backbone


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=18, choices=[18, 34, 50, 101])
    parser.add_argument("--steps", type=int, default=1400)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--crop-size", type=int, default=48)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--eval-crops", type=int, default=2000, help="held-out crops for the accuracy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="crop-rendering processes")
    parser.add_argument("--amp", default="auto", choices=["auto", "off", "bf16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: $DETECTOR_CACHE/pretrained/resnet{depth}-glyphs.pth ($DETECTOR_CACHE: .cache)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = args.out or Path(os.environ.get("DETECTOR_CACHE", ".cache")) / "pretrained" / f"resnet{args.depth}-glyphs.pth"
    record = pretrain_backbone(
        out,
        depth=args.depth,
        steps=args.steps,
        batch_size=args.batch_size,
        crop_size=args.crop_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        seed=args.seed,
        eval_crops=args.eval_crops,
        num_workers=args.workers,
        amp=args.amp,
        device=args.device,
    )
    print(
        f"{out}: held-out accuracy {100 * record['accuracy']:.1f} % ({record['settings']['classes']} classes), "
        f"{record['train_seconds']:.0f} s of training ({record['precision']})"
    )
    return record


if __name__ == "__main__":
    main()
