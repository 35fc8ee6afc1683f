"""The configs are the user interface: every option composes, instantiates, and bad input fails early."""

import inspect

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import detector.losses.classification as classification
import detector.losses.dice as dice
import detector.losses.equalized as equalized
import detector.losses.ghm as ghm
import detector.losses.iou as iou
import detector.losses.ohem as ohem
import detector.losses.quality as quality
import detector.losses.regression as regression
from detector.cli import train
from detector.engine.optimizer import build_optimizer
from tests.conftest import CONFIGS, run_script


def options(group):
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.mark.parametrize("option", options("model"))
def test_every_model_builds_and_predicts(compose_cfg, option):
    cfg = compose_cfg([f"model={option}"])
    model = instantiate(cfg.model, num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 128, 128))
    assert out["cls_logits"].shape[-1] == 3 and out["box_deltas"].shape[1] == out["anchors"].shape[0]


@pytest.mark.parametrize("group", ["loss", "box_loss", "optim", "schedule", "matcher"])
def test_every_loss_optimizer_schedule_and_matcher_option_instantiates(compose_cfg, group):
    for option in options(group):
        cfg = compose_cfg([f"{group}={option}"])
        if group == "optim":
            build_optimizer(cfg.optim, torch.nn.Conv2d(1, 1, 1))
        elif group == "schedule":
            assert instantiate(cfg.schedule, max_iters=100)(0) > 0
        elif group == "matcher":
            matcher = instantiate(cfg.criterion.matcher)
            expected = {"iou": "IoUMatcher", "detectron": "IoUMatcher", "atss": "ATSSMatcher"}[option]
            assert type(matcher).__name__ == expected
        else:
            assert isinstance(instantiate(cfg[group]), torch.nn.Module)


def test_every_loss_class_has_a_config_file():
    targets = {OmegaConf.load(p)["_target_"] for g in ("loss", "box_loss") for p in (CONFIGS / g).glob("*.yaml")}
    for module in (classification, regression, iou, ghm, ohem, dice, quality, equalized):
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, torch.nn.Module) and cls.__module__ == module.__name__ and not name.startswith("_"):
                assert any(t.endswith(f".{name}") for t in targets), f"{name} has no config in configs/loss or box_loss"


@pytest.mark.parametrize(
    "overrides",
    [
        ["data=coco"],
        ["data=coco_custom"],
        ["experiment=coco_r50_1x"],
        ["debug=smoke"],
        ["data=synthetic", "schedule=multistep", "optim=adamw"],
    ],
)
def test_group_combinations_compose(compose_cfg, overrides):
    cfg = compose_cfg(overrides)
    OmegaConf.to_container(cfg, resolve=True)
    assert cfg.trainer.max_iters >= 1


def test_paper_recipe(compose_cfg):
    cfg = compose_cfg(["experiment=coco_r50_1x"])
    assert cfg.model.backbone.depth == 50 and cfg.model.backbone.norm == "frozen_bn"
    assert cfg.data.batch_size == 16 and cfg.trainer.max_iters == 90000
    assert cfg.optim._target_ == "torch.optim.SGD" and cfg.optim.lr == 0.01
    assert cfg.optim.momentum == 0.9 and cfg.optim.weight_decay == 1e-4
    steps = instantiate(cfg.schedule, max_iters=cfg.trainer.max_iters).steps
    assert steps == [60000, 80000]
    assert cfg.data.train_min_sizes == [800] and cfg.data.max_size == 1333
    assert cfg.criterion.matcher.fg_iou == 0.5 and cfg.criterion.matcher.bg_iou == 0.4
    assert cfg.criterion.matcher.low_quality_matches == "detectron" and cfg.criterion.matcher.crowd == "background"
    assert cfg.model.anchor_generator.sizes == [32, 64, 128, 256, 512] and cfg.model.prior_prob == 0.01


def test_unknown_loss_lists_the_valid_choices():
    result = run_script("train.py", "loss=nope")
    assert result.returncode != 0
    assert "loss/nope" in result.stderr and "focal" in result.stderr


def test_invalid_gamma_fails_before_any_data_work(compose_cfg, tmp_path):
    """In-process; how train.py prints such an error: test_missing_coco_root_says_where_it_looked…."""
    cache = tmp_path / "cache"
    with pytest.raises(Exception, match=r"gamma must be >= 0, got -1(.|\n)*full_key: loss"):
        train(compose_cfg(["loss.gamma=-1", f"data.cache_dir={cache}"]))
    assert not cache.exists()


@pytest.mark.parametrize(
    "override,message",
    [
        ("trainer.amp=fp32", "trainer.amp must be one of ['auto', 'off', 'bf16', 'fp16']"),
        ("trainer.max_iters=0", "trainer.max_iters must be >= 1, got 0"),
        ("trainer.time_budget=0", "trainer.time_budget must be > 0 seconds or null, got 0"),
        ("trainer.time_budget=60 schedule.warmup_iters=10", "must lie inside the warmup (schedule.warmup_iters=10)"),
        ("trainer.diagnostics_period=-1", "trainer.diagnostics_period must be >= 0 (0 turns it off), got -1"),
        ("data.batch_size=0", "data.batch_size must be >= 1, got 0"),
        ("model.prior_prob=1.5", "prior_prob must be in (0, 1), got 1.5"),
        ("model.head.channels=48", "head channels must be a multiple of 32 for GroupNorm (32 groups), got 48"),
        ("model.anchor_generator.sizes=[32,64]", "anchors need one size per pyramid level"),
        ("criterion.matcher.bg_iou=0.6", "matcher needs 0 <= bg_iou <= fg_iou <= 1"),
        ("trainer.max_consecutive_nonfinite=0", "trainer.max_consecutive_nonfinite must be >= 1, got 0"),
        ("model.backbone.weights_path=/nonexistent.pth", "model.backbone.weights_path=/nonexistent.pth: no such file"),
        ("evaluation.backend=fast", "evaluation.backend must be one of ['auto', 'pycocotools', 'faster_coco_eval']"),
        (
            "criterion.matcher.low_quality_matches=true",
            "matcher low_quality_matches must be one of ['none', 'detectron', 'detectron2']",
        ),
        ("criterion.matcher.crowd=drop", "matcher crowd must be one of ['ignore', 'background'], got 'drop'"),
        ("optim.bias_lr_factor=0", "optim.bias_lr_factor must be > 0, got 0"),
        ("model=retinanet_r101", "model.backbone has norm=frozen_bn and frozen_stages=2 but no weights_path"),
        (
            "model=retinanet_r50 model.backbone.norm=bn",
            "Place torchvision's ImageNet ResNet-50 state dict (resnet50-0676ba61.pth)",
        ),
        ("model=retinanet_r18 model.backbone.frozen_stages=0", "model.backbone has norm=frozen_bn but no weights_path"),
    ],
)
def test_invalid_values_name_key_and_range_before_any_data_work(tmp_path, compose_cfg, override, message):
    """In process, through the same `detector.cli.train` as train.py (whose error output the gamma test checks)."""
    cache = tmp_path / "cache"
    with pytest.raises(Exception) as raised:  # ValueError, FileNotFoundError or Hydra's InstantiationException
        train(compose_cfg([*override.split(), f"data.cache_dir={cache}"]))
    assert message in str(raised.value)
    assert not cache.exists()


def test_the_paper_recipe_without_imagenet_weights_is_refused_before_any_data_work(tmp_path, compose_cfg):
    """experiment=coco_r50_1x freezes BatchNorm and the stem: without weights those are random."""
    with pytest.raises(ValueError, match=r"frozen_bn and frozen_stages=2 but no weights_path.*identity BatchNorm"):
        train(compose_cfg(["experiment=coco_r50_1x", "trainer.device=cpu", f"data.root={tmp_path / 'coco'}"]))
    weights = tmp_path / "resnet50.pth"
    torch.save({}, weights)
    with pytest.raises(Exception) as raised:  # with a weights file the checks pass; in process, Hydra's run dir is next
        train(
            compose_cfg(
                [
                    "experiment=coco_r50_1x",
                    "trainer.device=cpu",
                    f"data.root={tmp_path / 'coco'}",
                    f"model.backbone.weights_path={weights}",
                ]
            )
        )
    assert "no weights_path" not in str(raised.value)


def test_a_trainer_setting_out_of_range_is_a_value_error_that_names_its_key(compose_cfg):
    with pytest.raises(ValueError, match=r"^trainer.log_period must be >= 0 \(0 turns it off\), got -1$"):
        train(compose_cfg(["trainer.log_period=-1"]))


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.backbone.weights_path=null", r"frozen_bn and frozen_stages=3 but no weights_path"),
        ("model.head.channels=48", r"head channels must be a multiple of 32 for GroupNorm \(32 groups\), got 48"),
    ],
)
def test_a_run_to_be_refused_is_refused_before_the_preset_pretrains(tmp_path, compose_cfg, override, message):
    """experiment=paper_cpu builds its backbone first (minutes): a run to be refused must not wait for it."""
    backbone = tmp_path / "pretrained" / "resnet18-glyphs.pth"
    overrides = ["experiment=paper_cpu", override, f"pretrain.out={backbone}"]
    with pytest.raises(Exception, match=message):
        train(compose_cfg([*overrides, f"data.cache_dir={tmp_path / 'cache'}"]))
    assert not backbone.parent.exists() and not (tmp_path / "cache").exists()


def test_missing_coco_root_says_where_it_looked_and_how_to_lay_it_out(tmp_path):
    root = tmp_path / "nowhere"
    result = run_script("train.py", "data=coco", f"data.root={root}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode != 0
    assert f"{root}/annotations/instances_train2017.json" in result.stderr
    assert "ROOT/annotations/instances_{train,val}2017.json" in result.stderr


DESIGN_KEYS = [  # ../shared/DESIGN.md, "Command line and config groups" and "Data": what users type
    ["loss=focal_star", "loss.gamma=2", "loss.beta=1"],
    ["loss=focal", "loss.gamma=2", "loss.alpha=0.25", "box_loss=giou"],
    ["box_loss=smooth_l1", "box_loss.beta=0.11"],
    ["model=retinanet_r50"],
    ["model=retinanet_r18"],
    ["model=retinanet_r18_cpu"],
    ["data=synthetic", "data.num_train=10", "data.num_val=5", "data.image_size=128"],
    ["data=coco", "data.root=/datasets/coco"],
    ["data=coco", "data.train_ann=a.json", "data.train_dir=a", "data.val_ann=b.json", "data.val_dir=b"],
    ["optim=sgd", "schedule=multistep"],
    ["experiment=coco_r50_1x"],
    ["experiment=paper_cpu"],
    ["sweep=fl_table1a", "experiment=ablation_cpu"],
    ["debug=smoke"],
    ["trainer.max_iters=10", "trainer.eval_period=5", "trainer.log_period=1", "trainer.checkpoint_period=5"],
    ["trainer.amp=auto", "trainer.device=cpu", "data.batch_size=2", "data.num_workers=0", "seed=3"],
]


@pytest.mark.parametrize("overrides", DESIGN_KEYS, ids=" ".join)
def test_every_user_facing_key_of_the_design_composes_as_typed(compose_cfg, overrides):
    cfg = compose_cfg(overrides)
    for override in overrides:
        key, value = override.split("=", 1)
        if "." in key or key == "seed":  # a value: read back as typed
            assert str(OmegaConf.select(cfg, key)) == value, override
    assert cfg.trainer.amp in ("auto", "off", "bf16", "fp16") and cfg.trainer.device in ("auto", "cpu", "cuda")


def test_evaluate_takes_a_checkpoint_and_overrides_of_the_saved_config(compose_cfg):
    cfg = compose_cfg(["checkpoint=/runs/x/checkpoints/last.pt", "data=coco", "data.root=/datasets/coco"], "evaluate")
    assert cfg.checkpoint == "/runs/x/checkpoints/last.pt" and cfg.data.val_ann.startswith("/datasets/coco/")
