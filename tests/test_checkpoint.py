import os

import pytest
import torch

from detector.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from detector.models import ResNetBackbone
from tests.conftest import run_script


def test_round_trip_and_atomic_overwrite(tmp_path):
    path = tmp_path / "ckpt" / "last.pt"
    save_checkpoint({"model": {"w": torch.arange(3.0)}, "iteration": 7, "config": {"a": [1, "b"]}}, path)
    save_checkpoint({"model": {"w": torch.arange(4.0)}, "iteration": 8, "config": {}}, path)
    state = load_checkpoint(path)
    assert state["iteration"] == 8 and state["model"]["w"].tolist() == [0, 1, 2, 3]
    assert os.listdir(path.parent) == ["last.pt"]  # no temporary files left behind


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


def test_a_checkpoint_of_another_model_is_refused_with_what_differs_and_how_to_fine_tune(tmp_path, cache_dir):
    run = tmp_path / "run"
    result = run_script("train.py", "debug=smoke", f"data.cache_dir={cache_dir}", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = run / "checkpoints" / "last.pt"

    result = run_script("evaluate.py", f"checkpoint={checkpoint}", "model.head.channels=64",
                        f"hydra.run.dir={tmp_path / 'eval'}")
    assert result.returncode != 0
    assert "and does not fit this one" in result.stderr and "in the checkpoint, (" in result.stderr  # the shapes
    assert "model.head.channels: 32 in the checkpoint, 64 here" in result.stderr
    assert f"model.backbone.weights_path={checkpoint}" in result.stderr

    result = run_script("train.py", "debug=smoke", f"data.cache_dir={cache_dir}", "model.fpn.out_channels=64",
                        f"trainer.resume={checkpoint}", f"hydra.run.dir={tmp_path / 'resume'}")
    assert result.returncode != 0 and "model.fpn.out_channels: 32 in the checkpoint, 64 here" in result.stderr

    # the suggested fine-tuning start: the checkpoint's backbone, exactly, under a new head
    backbone = ResNetBackbone(depth=18, norm="bn", frozen_stages=0, weights_path=str(checkpoint))
    saved = torch.load(checkpoint, weights_only=True)["model"]
    for ours in ("stem.0.weight", "stages.3.1.conv2.weight", "stem.1.running_var"):
        theirs = f"backbone.{ours}"
        torch.testing.assert_close(backbone.state_dict()[ours], saved[theirs], rtol=0, atol=0)
