import os

import pytest
import torch

from detector.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


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
