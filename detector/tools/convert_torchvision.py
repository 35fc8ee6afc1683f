"""Turn a torchvision `retinanet_resnet50_fpn` state dict into one of our checkpoints.

    detector convert-torchvision retinanet_resnet50_fpn_coco-eeacb38b.pth converted.pt \
        --coco-json /datasets/coco/annotations/instances_val2017.json
    python evaluate.py checkpoint=converted.pt data.root=/datasets/coco

The checkpoint's config is `model=retinanet_r50_torchvision` (P6 from P5, torchvision's anchor
sizes and rounding), torchvision's postprocessing (score > 0.05, top 1000 per level, NMS 0.5,
300 detections) and COCO at 800/1333 padded to multiples of 32. torchvision's COCO head scores
91 classes indexed by COCO category id; with --coco-json the rows of the dataset's categories
are kept, in id order, so that labels are contiguous as everywhere in this project (sigmoid
scores are per class, so this selection changes no score). Without it every class is kept.
Only the weights file is read; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from detector.engine.checkpoint import CHECKPOINT_FORMAT, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]  # the repository: configs/

OVERRIDES = [
    "model=retinanet_r50_torchvision",
    "data=coco",
    "data.size_divisibility=32",
    "data.train_min_sizes=[800]",
    "data.test_min_size=800",
    "data.max_size=1333",
    "postprocess.score_thresh=0.05",
    "postprocess.topk_candidates=1000",
    "postprocess.nms_thresh=0.5",
    "postprocess.max_detections=300",
    "criterion.matcher.low_quality_matches=detectron2",
    "criterion.matcher.crowd=background",
]
NUM_ANCHORS = 9

# torchvision prefix → ours; the heads' conv towers are mapped by `_tower_key`
PREFIXES = [
    ("backbone.body.conv1.", "backbone.stem.0."),
    ("backbone.body.bn1.", "backbone.stem.1."),
    *((f"backbone.body.layer{i + 1}.", f"backbone.stages.{i}.") for i in range(4)),
    ("backbone.fpn.", "fpn.fpn."),
    ("head.classification_head.cls_logits.", "head.cls_logits."),
    ("head.regression_head.bbox_reg.", "head.box_deltas."),
]
TOWERS = {"head.classification_head.conv.": "head.cls_tower.", "head.regression_head.conv.": "head.box_tower."}


def _tower_key(key: str) -> str | None:
    """torchvision's tower conv i (`conv.{i}.0.weight`, conv + ReLU blocks) is our Sequential's entry 2i."""
    for prefix, target in TOWERS.items():
        if key.startswith(prefix):
            index, _, rest = key[len(prefix) :].split(".", 2)
            return f"{target}{2 * int(index)}.{rest}"
    return None


def convert_state_dict(state: dict, category_ids: list[int] | None = None) -> dict:
    """Our RetinaNet's state dict from torchvision's; `category_ids` selects and orders the classes."""
    converted = {}
    for key, value in state.items():
        target = _tower_key(key)
        if target is None:
            target = next((new + key[len(old) :] for old, new in PREFIXES if key.startswith(old)), None)
        if target is None:
            if key.endswith("num_batches_tracked"):
                continue
            raise KeyError(f"no mapping for torchvision key {key!r}")
        converted[target] = value
    if category_ids is not None:
        for name in ("head.cls_logits.weight", "head.cls_logits.bias"):
            value = converted[name]
            per_anchor = value.reshape(NUM_ANCHORS, -1, *value.shape[1:])  # channel = anchor · K + class
            converted[name] = per_anchor[:, category_ids].reshape(-1, *value.shape[1:]).clone()
    return converted


def run_config(num_classes_names: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=OVERRIDES)
    config = OmegaConf.to_container(cfg, resolve=False)
    config["classes"] = num_classes_names
    return config


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("torchvision_weights", type=Path, help="a retinanet_resnet50_fpn state dict (.pth)")
    parser.add_argument("output", type=Path)
    parser.add_argument("--coco-json", type=Path, help="keep the classes of this COCO annotation file, in id order")
    args = parser.parse_args(argv)
    state = torch.load(args.torchvision_weights, map_location="cpu", weights_only=True)
    total = state["head.classification_head.cls_logits.weight"].shape[0] // NUM_ANCHORS
    if args.coco_json is not None:
        categories = sorted(json.loads(args.coco_json.read_text())["categories"], key=lambda c: c["id"])
        ids, names = [c["id"] for c in categories], [c["name"] for c in categories]
        if max(ids) >= total:
            raise SystemExit(f"{args.coco_json}: category id {max(ids)} is outside the {total} classes of the weights")
    else:
        ids, names = None, [f"class_{i}" for i in range(total)]
    converted = convert_state_dict(state, ids)
    config = run_config(names)
    model = instantiate(OmegaConf.create(config["model"]), num_classes=len(names))
    model.load_state_dict(converted)  # strict: every tensor mapped, every shape right
    save_checkpoint(
        {
            "model": model.state_dict(),
            "iteration": 0,
            "config": config,
            "source": str(args.torchvision_weights),
            "format": CHECKPOINT_FORMAT,
        },
        args.output,
    )
    print(
        f"wrote {args.output}: {len(names)} classes, {len(converted)} tensors; "
        f"evaluate with: python evaluate.py checkpoint={args.output} data.root=…"
    )


if __name__ == "__main__":
    main()
