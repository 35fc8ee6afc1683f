"""Learning-rate schedules, and the time budget that fixes their horizon."""

import json
import math

import pytest
import torch
from hydra.utils import instantiate

from detector.cli import build, build_datasets
from detector.data.loader import infinite_train_batches
from detector.engine.schedule import WarmupCosine, WarmupMultiStep, lambda_scheduler
from detector.engine.trainer import Trainer


def test_cosine_decays_from_the_end_of_warmup_to_the_final_factor():
    schedule = WarmupCosine(max_iters=110, warmup_iters=10, warmup_factor=0.001, final_factor=0.0)
    assert schedule(0) == pytest.approx(0.001)
    assert schedule(5) == pytest.approx(0.001 * 0.5 + 0.5)
    assert schedule(10) == 1.0
    assert schedule(35) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    assert schedule(60) == pytest.approx(0.5)
    assert schedule(110) == pytest.approx(0.0, abs=1e-12) and schedule(500) == pytest.approx(0.0, abs=1e-12)
    floor = WarmupCosine(max_iters=110, warmup_iters=10, final_factor=0.1)
    assert floor(60) == pytest.approx(0.1 + 0.9 * 0.5) and floor(110) == pytest.approx(0.1)


def test_warmup_does_not_depend_on_the_horizon_and_the_horizon_can_be_moved():
    short, long = (WarmupCosine(max_iters=n, warmup_iters=20) for n in (30, 1400))
    assert [short(t) for t in range(21)] == [long(t) for t in range(21)]
    assert short(25) != long(25)
    long.max_iters = 30
    assert [short(t) for t in range(40)] == [long(t) for t in range(40)]
    steps = WarmupMultiStep(max_iters=90, milestones=(0.666667, 0.888889), gamma=0.1, warmup_iters=0)
    assert [steps(t) for t in (59, 60, 79, 80)] == pytest.approx([1.0, 0.1, 0.1, 0.01])
    steps.max_iters = 9
    assert [steps(t) for t in (5, 6, 7, 8)] == pytest.approx([1.0, 0.1, 0.1, 0.01])


class FakeClock:
    """Each reading is `step` seconds after the last, so every training step measures `step` seconds."""

    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def smoke_trainer(compose_cfg, cache_dir, output_dir, max_iters, **budget):
    cfg = compose_cfg(["debug=smoke", f"data.cache_dir={cache_dir}"])
    train_set, _ = build_datasets(cfg.data)
    torch.manual_seed(0)
    model, criterion, _ = build(cfg, train_set.num_classes)
    optimizer = instantiate(cfg.optim)(model.parameters())
    schedule = WarmupCosine(max_iters=max_iters, warmup_iters=4)
    return Trainer(model, criterion, optimizer, lambda_scheduler(optimizer, schedule),
                   lambda start: infinite_train_batches(train_set, 2, 0, 0, start), validator=None,
                   output_dir=output_dir, max_iters=max_iters, batch_size=2, device=torch.device("cpu"),
                   checkpoint_period=4, **budget)


def test_time_budget_ends_the_schedule_on_time_and_a_rerun_with_its_count_is_identical(compose_cfg, cache_dir,
                                                                                         tmp_path):
    budgeted = smoke_trainer(compose_cfg, cache_dir, tmp_path / "budget", max_iters=50, time_budget=3.0,
                             budget_probe_iters=3, clock=FakeClock(0.5))
    metrics = budgeted.train()
    assert metrics["iteration"] == 6 and metrics["time_budget"] == {"seconds": 3.0, "max_iters": 6, "probe_iters": 3}
    assert budgeted.scheduler.lr_lambdas[0].max_iters == 6
    assert budgeted.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # the cosine ended at 6
    assert json.loads((tmp_path / "budget" / "metrics.json").read_text())["time_budget"]["max_iters"] == 6

    rerun = smoke_trainer(compose_cfg, cache_dir, tmp_path / "rerun", max_iters=6)
    assert rerun.train()["iteration"] == 6 and "time_budget" not in json.loads(
        (tmp_path / "rerun" / "metrics.json").read_text())
    for name, value in budgeted.module.state_dict().items():
        torch.testing.assert_close(rerun.module.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_time_budget_is_capped_by_max_iters_and_kept_on_resume(compose_cfg, cache_dir, tmp_path):
    capped = smoke_trainer(compose_cfg, cache_dir, tmp_path / "capped", max_iters=4, time_budget=1e6,
                           budget_probe_iters=3, clock=FakeClock(0.5))
    assert capped.train()["iteration"] == 4

    first = smoke_trainer(compose_cfg, cache_dir, tmp_path / "first", max_iters=50, time_budget=2.5,
                          budget_probe_iters=3, clock=FakeClock(0.5))
    first.train()  # 5 iterations
    state = torch.load(tmp_path / "first" / "checkpoints" / "last.pt", weights_only=True)
    assert state["max_iters"] == 5 and state["budget_fixed"]
    resumed = smoke_trainer(compose_cfg, cache_dir, tmp_path / "first", max_iters=50, time_budget=2.5,
                            budget_probe_iters=3, clock=FakeClock(5.0))  # a slower machine would fit one step
    resumed.resume(tmp_path / "first" / "checkpoints" / "last.pt")
    assert resumed.max_iters == 5 and resumed.scheduler.lr_lambdas[0].max_iters == 5
