"""Pretraining the backbone on glyph crops: written once, loaded by the detector's backbone, and better
than a random init on held-out crops."""

import json
from runpy import run_path

import pytest
import torch
import torchvision

from detector.engine import pretrain
from detector.engine.pretrain import GlyphCrops, evaluate_crops, pretrain_backbone
from detector.models import ResNetBackbone
from tests.conftest import ROOT


def test_crops_follow_from_seed_and_index():
    crops = GlyphCrops(4, 32, seed=3)
    image, label = crops[2]
    again, same_label = GlyphCrops(4, 32, seed=3)[2]
    assert image.shape == (3, 32, 32) and torch.equal(image, again) and label == same_label
    assert not torch.equal(image, GlyphCrops(4, 32, seed=4)[2][0])
    assert 0 <= label < 80


def test_pretraining_writes_a_backbone_that_the_detector_loads_and_caches_it(tmp_path, monkeypatch):
    out = tmp_path / "resnet18-glyphs.pth"
    settings = dict(
        depth=18, steps=3, batch_size=8, crop_size=32, warmup_steps=1, eval_crops=16, num_workers=0, progress=False
    )
    record = pretrain_backbone(out, **settings)
    assert out.is_file() and json.loads(out.with_suffix(".json").read_text()) == record
    assert record["settings"]["steps"] == 3 and 0.0 <= record["accuracy"] <= 1.0 and record["train_seconds"] > 0
    saved = torch.load(out, weights_only=True)
    loaded = ResNetBackbone(depth=18, norm="frozen_bn", frozen_stages=2, weights_path=str(out))
    fresh = ResNetBackbone(depth=18, norm="frozen_bn", frozen_stages=2)
    assert torch.equal(loaded.stem[0].weight, saved["conv1.weight"])
    assert torch.equal(loaded.stages[3][1].conv2.weight, saved["layer4.1.conv2.weight"])
    assert torch.equal(loaded.stem[1].running_var, saved["bn1.running_var"])  # BatchNorm statistics come along
    assert not torch.equal(fresh.stem[0].weight, saved["conv1.weight"])
    monkeypatch.setattr(pretrain, "DataLoader", None)  # a second call with the same settings must not train
    assert pretrain_backbone(out, **settings) == record


@pytest.mark.slow
def test_pretrained_backbone_beats_a_random_init_on_held_out_crops(tmp_path):
    """A quarter of the default schedule (the loss leaves chance after about 200 steps of 128 crops)."""
    record = pretrain_backbone(
        tmp_path / "r18.pth",
        steps=350,
        batch_size=64,
        crop_size=48,
        warmup_steps=25,
        eval_crops=512,
        num_workers=1,
        progress=False,
    )
    torch.manual_seed(1)
    random_accuracy, random_loss = evaluate_crops(torchvision.models.resnet18(num_classes=80), 48, 1, 512, 64)
    assert record["accuracy"] > 2 * max(random_accuracy, 1 / 80) and record["held_out_loss"] < random_loss - 0.05


def test_the_command_names_its_output_and_accuracy(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DETECTOR_CACHE", str(tmp_path))
    main = run_path(str(ROOT / "scripts" / "pretrain_backbone.py"))["main"]
    record = main(
        [
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--crop-size",
            "32",
            "--warmup-steps",
            "1",
            "--eval-crops",
            "8",
            "--workers",
            "0",
            "--amp",
            "off",
        ]
    )
    out = tmp_path / "pretrained" / "resnet18-glyphs.pth"
    assert out.is_file() and record["settings"]["crop_size"] == 32
    assert f"{out}: held-out accuracy" in capsys.readouterr().out


def tiny_paper_preset(out):
    """experiment=paper_cpu with its pretraining shrunk to 2 steps of 4 crops, written to `out`."""
    return [
        "experiment=paper_cpu",
        f"pretrain.out={out}",
        "pretrain.steps=2",
        "pretrain.batch_size=4",
        "pretrain.crop_size=32",
        "pretrain.warmup_steps=1",
        "+pretrain.eval_crops=8",
        "+pretrain.num_workers=0",
        "+pretrain.progress=false",
    ]


def test_the_paper_preset_builds_its_backbone_on_first_use_and_loads_it(compose_cfg, tmp_path):
    """experiment=paper_cpu's `pretrain` node (shrunk here) writes the file its model reads."""
    from hydra.utils import instantiate

    out = tmp_path / "pretrained" / "resnet18-glyphs.pth"
    cfg = compose_cfg(tiny_paper_preset(out))
    assert cfg.model.backbone.weights_path == str(out) and not out.exists()
    record = instantiate(cfg.pretrain)
    assert out.is_file() and record["settings"]["steps"] == 2
    model = instantiate(cfg.model, num_classes=80)
    saved = torch.load(out, weights_only=True)
    assert torch.equal(model.backbone.stages[3][1].conv2.weight, saved["layer4.1.conv2.weight"])
    assert torch.equal(model.backbone.stem[1].running_mean, saved["bn1.running_mean"])


def test_train_checks_the_model_before_the_preset_backbone_and_its_file_after(compose_cfg, tmp_path, monkeypatch):
    """train() checks the model's values first (a head of 0 channels is refused before any pretraining),
    then runs the `pretrain` node, so the weights file the model names exists when it is checked; the
    data come after (here refused: no validation images)."""
    from hydra.errors import InstantiationException

    from detector import cli
    from detector.cli import train

    monkeypatch.setattr(cli, "output_dir", lambda: tmp_path / "run")  # in process: no Hydra run directory
    out = tmp_path / "resnet18-glyphs.pth"
    bad = compose_cfg([*tiny_paper_preset(out), "model.head.channels=0", f"data.cache_dir={tmp_path / 'data'}"])
    with pytest.raises(InstantiationException, match="head needs num_convs >= 0 and channels >= 1"):
        train(bad)
    assert not out.exists()
    cfg = compose_cfg([*tiny_paper_preset(out), "data.num_val=0", f"data.cache_dir={tmp_path / 'data'}"])
    with pytest.raises(InstantiationException, match="glyph data needs num_train, num_val, max_objects >= 1"):
        train(cfg)
    assert out.is_file() and not (tmp_path / "data").exists()  # built and found; no data written
