import os

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from detector.cli import build_criterion
from detector.engine.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    upgrade_training_state,
)
from detector.engine.inference import load_for_inference
from detector.engine.settings import TrainerSettings
from detector.engine.trainer import Trainer
from detector.models import ResNetBackbone
from tests.conftest import run_script


def test_round_trip_and_atomic_overwrite(tmp_path):
    path = tmp_path / "ckpt" / "last.pt"
    save_checkpoint({"model": {"w": torch.arange(3.0)}, "iteration": 7, "config": {"a": [1, "b"]}}, path)
    save_checkpoint({"model": {"w": torch.arange(4.0)}, "iteration": 8, "config": {}}, path)
    state = load_checkpoint(path)
    assert state["iteration"] == 8 and state["model"]["w"].tolist() == [0, 1, 2, 3]
    assert os.listdir(path.parent) == ["last.pt"]  # no temporary files left behind


def test_load_for_inference_round_trips_a_checkpoint_without_its_pretrained_backbone_file(compose_cfg, tmp_path):
    """The experiment=paper_cpu config names a pretrained backbone file; the checkpoint holds every
    weight, so the model loads after that file has gone, with the overrides applied."""
    cfg = compose_cfg(["experiment=paper_cpu", f"pretrain.out={tmp_path / 'gone.pth'}"])
    torch.manual_seed(0)
    model = instantiate(OmegaConf.merge(cfg.model, {"backbone": {"weights_path": None}}), num_classes=80)
    config = {**OmegaConf.to_container(cfg, resolve=True), "classes": [f"c{i}" for i in range(80)]}
    save_checkpoint({"model": model.state_dict(), "config": config, "iteration": 42}, tmp_path / "last.pt")
    loaded = load_for_inference(tmp_path / "last.pt", {"postprocess.score_thresh": 0.3})
    assert (
        loaded.config.model.backbone.weights_path == str(tmp_path / "gone.pth") and not (tmp_path / "gone.pth").exists()
    )
    assert not loaded.model.training and loaded.iteration == 42 and loaded.classes == config["classes"]
    assert loaded.postprocessor.score_thresh == 0.3 and loaded.config.postprocess.score_thresh == 0.3
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value), name
    state = {"model": model.state_dict(), "config": config, "iteration": 42, "format": CHECKPOINT_FORMAT + 1}
    save_checkpoint(state, tmp_path / "newer.pt")
    with pytest.raises(CheckpointError, match=f"newer.pt has checkpoint format {CHECKPOINT_FORMAT + 1}; this code"):
        load_for_inference(tmp_path / "newer.pt")


def test_checkpoint_formats_older_ones_upgraded_newer_ones_refused():
    old = {"model": {}, "iteration": 700, "train_seconds": 12.0}  # format 1: no "format" key
    upgraded = upgrade_training_state(old, "old.pt", max_iters=1400)
    assert upgraded["format"] == CHECKPOINT_FORMAT == 2 and upgraded["iteration"] == 700
    assert (upgraded["skipped_steps"], upgraded["nonfinite_in_a_row"], upgraded["replaced_images"]) == (0, 0, [])
    assert upgraded["max_iters"] == 1400 and upgraded["budget_fixed"] is False and upgraded["rng"] is None
    current = {**upgraded, "skipped_steps": 3, "max_iters": 900}
    assert upgrade_training_state(current, "now.pt", max_iters=1400) == current  # nothing to fill in
    with pytest.raises(CheckpointError, match="new.pt has checkpoint format 3; this code reads formats up to 2"):
        upgrade_training_state({**current, "format": 3}, "new.pt", max_iters=1400)


def test_truncated_checkpoint_is_refused(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"w": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_pickle_that_runs_code_is_refused_and_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"model": RunsCode()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()


def test_a_checkpoint_of_another_model_is_refused_with_what_differs_and_how_to_fine_tune(
    tmp_path, cache_dir, compose_cfg
):
    """A checkpoint as training writes it (model, config with its classes, iteration, the optimizer's
    and scheduler's states for a resume) of the smoke model."""
    cfg = compose_cfg(["debug=smoke", f"data.cache_dir={cache_dir}"])
    torch.manual_seed(0)
    model = instantiate(cfg.model, num_classes=6)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    config = {
        **OmegaConf.to_container(cfg, resolve=True),
        "classes": ["circle", "square", "triangle", "star", "cross", "ring"],
    }
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pt"
    save_checkpoint(
        {"model": model.state_dict(), "config": config, "iteration": 4, "optimizer": optimizer.state_dict()}, checkpoint
    )

    result = run_script(
        "evaluate.py", f"checkpoint={checkpoint}", "model.head.channels=64", f"hydra.run.dir={tmp_path / 'eval'}"
    )
    assert result.returncode != 0
    assert "and does not fit this one" in result.stderr and "in the checkpoint, (" in result.stderr  # the shapes
    assert "model.head.channels: 32 in the checkpoint, 64 here" in result.stderr
    assert f"model.backbone.weights_path={checkpoint}" in result.stderr

    wider = compose_cfg(["debug=smoke", f"data.cache_dir={cache_dir}", "model.fpn.out_channels=64"])
    wider_model = instantiate(wider.model, num_classes=6)
    trainer = Trainer(
        wider_model,
        build_criterion(wider),
        torch.optim.SGD(wider_model.parameters(), lr=0.01),
        None,
        lambda start: iter(()),
        None,
        tmp_path / "resume",
        settings=TrainerSettings(max_iters=8),
        batch_size=2,
        device=torch.device("cpu"),
        run_config={**OmegaConf.to_container(wider, resolve=True), "classes": config["classes"]},
    )
    with pytest.raises(CheckpointError, match="model.fpn.out_channels: 32 in the checkpoint, 64 here"):
        trainer.resume(checkpoint)  # what train.py trainer.resume=PATH does

    # the suggested fine-tuning start: the checkpoint's backbone, exactly, under a new head
    backbone = ResNetBackbone(depth=18, norm="bn", frozen_stages=0, weights_path=str(checkpoint))
    saved = torch.load(checkpoint, weights_only=True)["model"]
    for ours in ("stem.0.weight", "stages.3.1.conv2.weight", "stem.1.running_var"):
        theirs = f"backbone.{ours}"
        torch.testing.assert_close(backbone.state_dict()[ours], saved[theirs], rtol=0, atol=0)


def test_a_resume_refuses_another_configuration_s_checkpoint_and_lets_run_control_change(smoke_trainer, tmp_path):
    """trainer.resume=auto in a directory that holds another configuration's run (a sweep rerun whose
    jobs moved, a row rerun with another loss) must not continue that run as this one; how long it
    runs, where its files are and how it is evaluated may change."""

    def trainer(*overrides):
        return smoke_trainer(*overrides, log_period=1, run_config=True)

    trainer("trainer.max_iters=2").train()
    last = tmp_path / "checkpoints" / "last.pt"

    with pytest.raises(CheckpointError) as refused:
        trainer("trainer.max_iters=4", "loss=ce", "seed=1").resume(last)
    message = str(refused.value)
    assert "seed: 0 in the checkpoint, 1 here" in message
    assert "loss._target_: 'detector.losses.FocalLoss' in the checkpoint, 'detector.losses." in message
    assert "trainer.max_iters" not in message and "hydra.sweep.dir=" in message
    with pytest.raises(CheckpointError, match="trainer.clip_grad_norm: None in the checkpoint, 35 here"):
        trainer("trainer.max_iters=4", "trainer.clip_grad_norm=35").resume(last)

    resumed = trainer(
        "trainer.max_iters=4",
        "trainer.eval_period=2",
        "evaluation.backend=pycocotools",
        "postprocess.score_thresh=0.1",
        "data.num_workers=1",
    )
    resumed.run_config["data"]["cache_dir"] = str(tmp_path / "moved")
    resumed.run_config["added_since"] = True  # a setting the checkpoint's code did not have yet
    resumed.resume(last)
    assert resumed.iteration == 2
    resumed.train()
    assert resumed.iteration == 4
