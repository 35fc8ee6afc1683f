"""torchvision's RetinaNet converted to ours gives the same detections on the same images."""

import json

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from torchvision.models.detection import RetinaNet as TorchvisionRetinaNet
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from detector.data.loader import PadCollate
from detector.data.transforms import eval_transforms
from detector.engine.checkpoint import CHECKPOINT_FORMAT, load_checkpoint
from detector.tools import convert_torchvision, export_onnx, predict
from tests.conftest import run_tool

HEIGHT, WIDTH = 256, 352  # multiples of 32, not of 128: across, P6 and P7 strides are 58 and 117 (torchvision)


@pytest.fixture(scope="module")
def torchvision_model():
    """retinanet_resnet50_fpn's architecture (frozen BatchNorm, P6 from P5, 91 classes) with random
    weights, BatchNorm statistics and classification biases, so that there are detections to compare."""
    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(
        backbone_name="resnet50",
        weights=None,
        norm_layer=FrozenBatchNorm2d,
        trainable_layers=3,
        returned_layers=[2, 3, 4],
        extra_blocks=LastLevelP6P7(256, 256),
    )
    model = TorchvisionRetinaNet(backbone, num_classes=91)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, FrozenBatchNorm2d):
                module.weight.uniform_(0.5, 1.0)
                module.bias.uniform_(-0.1, 0.1)
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 2.0)
        for conv in model.head.classification_head.modules():  # logits that vary from place to place
            if isinstance(conv, torch.nn.Conv2d):
                conv.weight.normal_(0, 0.03)
        # two classes score above the threshold at some places, the rest never: the comparison stays below
        # the 300-detection cap, where tied scores could let each implementation keep a different detection
        bias = model.head.classification_head.cls_logits.bias.view(9, 91)
        bias.fill_(-12.0)
        bias[:, [5, 60]] = torch.empty(9, 2).uniform_(-4.6, -4.0)
        model.head.regression_head.bbox_reg.weight.normal_(0, 0.02)
    # the same preprocessing on both sides: images come normalised, at their size (scale 1)
    model.transform = GeneralizedRCNNTransform(HEIGHT, WIDTH, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    return model.eval()


def convert(tmp_path, model, *extra):
    weights, output = tmp_path / "tv.pth", tmp_path / "converted.pt"
    torch.save(model.state_dict(), weights)
    result = run_tool(convert_torchvision.main, weights, output, *extra)  # detector convert-torchvision
    assert result.returncode == 0, result.stderr[-3000:]
    state = load_checkpoint(output)
    assert state["format"] == CHECKPOINT_FORMAT
    config = OmegaConf.create(state["config"])
    ours = instantiate(config.model, num_classes=len(state["config"]["classes"]))
    ours.load_state_dict(state["model"])
    return ours.eval(), instantiate(config.postprocess), state


def test_converted_model_reproduces_torchvision_detections(tmp_path, torchvision_model):
    ours, postprocess, state = convert(tmp_path, torchvision_model)
    assert (
        state["config"]["postprocess"]["max_detections"] == 300 and state["config"]["data"]["size_divisibility"] == 32
    )
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = torchvision_model(list(images))
        got = postprocess(ours(images), [(HEIGHT, WIDTH)] * 2)
        features = list(torchvision_model.backbone(images).values())
        their_anchors = torchvision_model.anchor_generator(ImageList(images, [(HEIGHT, WIDTH)] * 2), features)[0]
    torch.testing.assert_close(ours(images)["anchors"], their_anchors, rtol=0, atol=0)  # sizes, rounding, strides
    for mine, theirs in zip(got, expected):
        assert 10 < len(theirs["boxes"]) < 300 and len(mine["boxes"]) == len(theirs["boxes"])  # not two empty lists
        # the same detections; equal scores may come in either order, so pair them by label and box
        distance = torch.cdist(mine["boxes"], theirs["boxes"], p=float("inf"))
        distance += 1e6 * (mine["labels"][:, None] != theirs["labels"][None, :])
        pairs = distance.argmin(dim=1)
        assert sorted(pairs.tolist()) == list(range(len(pairs)))  # one to one
        assert distance.min(dim=1).values.max() < 1e-4
        torch.testing.assert_close(mine["scores"], theirs["scores"][pairs], rtol=0, atol=1e-5)


def test_coco_categories_select_the_matching_rows(tmp_path, torchvision_model):
    categories = [{"id": i, "name": f"c{i}"} for i in (90, 1, 7, 15, 3)]
    coco_json = tmp_path / "instances.json"
    coco_json.write_text(json.dumps({"images": [], "annotations": [], "categories": categories}))
    ours, _, state = convert(tmp_path, torchvision_model, "--coco-json", str(coco_json))
    assert state["config"]["classes"] == ["c1", "c3", "c7", "c15", "c90"]
    images = torch.randn(1, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        features = torchvision_model.backbone(images)
        theirs = torchvision_model.head(list(features.values()))["cls_logits"]  # (1, A, 91)
        mine = ours(images)["cls_logits"]
    torch.testing.assert_close(mine, theirs[..., [1, 3, 7, 15, 90]], rtol=1e-5, atol=1e-5)  # a 45- vs 819-channel conv


@pytest.mark.parametrize(
    "head,sizes",  # each export checked at a size other than its example's (256x384): the size is dynamic
    [
        ("deltas", ["128x256", "256x128"]),
        # GFL's distribution head, one size; slow (a second 20 s export). In the fast tier the test below
        # checks the same wrapper's outputs on it eagerly
        pytest.param("gfl", ["256x128"], marks=pytest.mark.slow),
    ],
)
def test_onnx_export_has_a_dynamic_image_size_and_matches_pytorch(
    tmp_path, compose_cfg, cache_dir, capsys, head, sizes
):
    reg_max = ["model.head.reg_max=16"] if head == "gfl" else []
    cfg = compose_cfg(["debug=smoke", f"data.cache_dir={cache_dir}", *reg_max])
    torch.manual_seed(0)
    model = instantiate(cfg.model, num_classes=3)
    with torch.no_grad():
        model.head.cls_logits.bias.uniform_(-3.0, 0.0)  # detections to compare (the prior would give none)
    config = {**OmegaConf.to_container(cfg, resolve=True), "classes": ["a", "b", "c"]}
    checkpoint = tmp_path / "model.pt"
    torch.save({"model": model.state_dict(), "iteration": 0, "config": config}, checkpoint)
    out = tmp_path / "model.onnx"
    export_onnx.main([str(checkpoint), "--out", str(out), "--check-sizes", *sizes])  # detector export-onnx
    checked = [line for line in capsys.readouterr().out.splitlines() if "outputs within 1e-4" in line]
    assert [line.split(":")[0] for line in checked] == [size.replace("x", "×") for size in sizes]
    assert all(int(line.split(", ")[1].split()[0]) > 0 for line in checked)  # detections were compared
    assert out.stat().st_size > 1e6


@pytest.mark.parametrize("reg_max", [None, 16])
def test_the_exported_network_gives_the_head_s_outputs_by_name(compose_cfg, reg_max):
    model = instantiate(compose_cfg(["debug=smoke", f"model.head.reg_max={reg_max or 'null'}"]).model, num_classes=3)
    network = export_onnx.Network(model).eval()
    images = torch.randn(2, 3, 128, 256, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        outputs, expected = network(images), model.eval()(images)
    box = "box_deltas" if reg_max is None else "box_distribution"
    assert network.output_names == ["cls_logits", box]
    for name, value in zip(network.output_names, outputs):
        assert torch.equal(value, expected[name])
    assert outputs[1].shape[-1] == (4 if reg_max is None else reg_max + 1)


def test_predict_draws_boxes_and_writes_coco_results_in_file_pixels(tmp_path, compose_cfg, cache_dir):
    cfg = compose_cfg(["debug=smoke", f"data.cache_dir={cache_dir}", "data.image_size=256"])  # test size 256
    torch.manual_seed(0)
    model = instantiate(cfg.model, num_classes=2)
    with torch.no_grad():
        model.head.cls_logits.bias.uniform_(-3.0, 0.0)
    checkpoint = tmp_path / "model.pt"
    torch.save(
        {
            "model": model.state_dict(),
            "iteration": 0,
            "config": {**OmegaConf.to_container(cfg, resolve=True), "classes": ["ring", "star"]},
        },
        checkpoint,
    )
    folder = tmp_path / "images"
    folder.mkdir()
    generator = torch.Generator().manual_seed(3)
    for name, (height, width) in {"wide.jpg": (150, 300), "tall.png": (256, 128)}.items():
        pixels = (torch.rand(height, width, 3, generator=generator) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / name)
    out = tmp_path / "out"
    # --amp off: the comparison below runs the model in fp32; auto is bf16 where it is fast (an AMX CPU)
    result = run_tool(predict.main, checkpoint, folder, "--out", out, "--score", "0.1", "--amp", "off")
    assert result.returncode == 0, result.stderr[-3000:]
    assert Image.open(out / "wide.png").size == (300, 150) and Image.open(out / "tall.png").size == (128, 256)
    detections = json.loads((out / "detections.json").read_text())
    by_file = {name: [d for d in detections if d["file_name"].endswith(name)] for name in ("wide.jpg", "tall.png")}
    assert all(len(found) > 0 for found in by_file.values())
    for name, (height, width) in {"wide.jpg": (150, 300), "tall.png": (256, 128)}.items():
        for d in by_file[name]:
            x, y, w, h = d["bbox"]
            assert -1e-3 <= x and -1e-3 <= y and x + w <= width + 1e-3 and y + h <= height + 1e-3
            assert d["category"] == ["ring", "star"][d["category_id"]] and d["score"] > 0.05
    # the same detections as the evaluation path: 300×150 resized to 256×128 (long side ≤ 256), boxes × 150/128
    transform = eval_transforms(256, 256)
    pixels = np.asarray(Image.open(folder / "wide.jpg").convert("RGB"))
    tensor = transform(image=pixels, bboxes=[], labels=[], iscrowd=[])["image"]
    with torch.no_grad():
        expected = instantiate(cfg.postprocess)(
            model.eval()(PadCollate(128)([(tensor, {})])[0]), [tuple(tensor.shape[-2:])]
        )[0]
    first = by_file["wide.jpg"][0]
    torch.testing.assert_close(torch.tensor(first["bbox"][:2]), expected["boxes"][0, :2] * 150 / 128, rtol=0, atol=1e-3)
