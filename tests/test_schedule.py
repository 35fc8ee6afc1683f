"""Learning-rate schedules, and the time budget that fixes their horizon."""

import json
import math

import pytest
import torch

from detector.engine.hooks import TimeBudget
from detector.engine.schedule import WarmupCosine, WarmupMultiStep


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


class WarmingClock(FakeClock):
    """The first `slow` steps take `first` seconds (warm-up), the rest `step`."""

    def __init__(self, step: float, first: float, slow: int):
        super().__init__(step)
        self.first, self.slow, self.readings = first, slow, 0

    def __call__(self) -> float:
        self.readings += 1
        self.now += self.first if self.readings <= 2 * self.slow and self.readings % 2 == 0 else self.step
        return self.now


@pytest.fixture
def cosine_trainer(smoke_trainer):
    """cosine_trainer(output_dir, max_iters, **options): a smoke trainer on a cosine schedule over max_iters
    (4 iterations of warm-up) unless `schedule` is given, with a checkpoint every 4 iterations."""

    def make(output_dir, max_iters, schedule=None, **options):
        schedule = schedule or WarmupCosine(max_iters=max_iters, warmup_iters=4)
        return smoke_trainer(
            output_dir=output_dir, max_iters=max_iters, schedule=schedule, checkpoint_period=4, **options
        )

    return make


def test_time_budget_ends_the_schedule_on_time_and_a_rerun_with_its_count_is_identical(cosine_trainer, tmp_path):
    budgeted = cosine_trainer(
        tmp_path / "budget",
        max_iters=50,
        time_budget=3.0,
        budget_probe_iters=3,
        clock=FakeClock(0.5),
    )
    metrics = budgeted.train()
    assert metrics["iteration"] == 6 and metrics["time_budget"] == {"seconds": 3.0, "max_iters": 6, "probe_iters": 3}
    assert budgeted.scheduler.lr_lambdas[0].max_iters == 6
    assert budgeted.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # the cosine ended at 6
    assert json.loads((tmp_path / "budget" / "metrics.json").read_text())["time_budget"]["max_iters"] == 6

    rerun = cosine_trainer(tmp_path / "rerun", max_iters=6)
    assert rerun.train()["iteration"] == 6 and "time_budget" not in json.loads(
        (tmp_path / "rerun" / "metrics.json").read_text()
    )
    for name, value in budgeted.module.state_dict().items():
        torch.testing.assert_close(rerun.module.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_time_budget_is_capped_by_max_iters_and_kept_on_resume(cosine_trainer, tmp_path):
    capped = cosine_trainer(
        tmp_path / "capped",
        max_iters=4,
        time_budget=1e6,
        budget_probe_iters=3,
        clock=FakeClock(0.5),
    )
    assert capped.train()["iteration"] == 4

    first = cosine_trainer(
        tmp_path / "first",
        max_iters=50,
        time_budget=2.5,
        budget_probe_iters=3,
        clock=FakeClock(0.5),
    )
    first.train()  # 5 iterations
    state = torch.load(tmp_path / "first" / "checkpoints" / "last.pt", weights_only=True)
    assert state["max_iters"] == 5 and state["budget_fixed"]
    resumed = cosine_trainer(
        tmp_path / "first",
        max_iters=50,
        time_budget=2.5,
        budget_probe_iters=3,
        clock=FakeClock(5.0),
    )  # a slower machine would fit one step
    resumed.resume(tmp_path / "first" / "checkpoints" / "last.pt")
    assert resumed.max_iters == 5 and resumed.scheduler.lr_lambdas[0].max_iters == 5


def test_the_probe_times_its_last_three_quarters_and_keeps_milestones_out_of_it(cosine_trainer, tmp_path):
    # steps 1-2 take 10 s (warm-up), the rest 0.5 s; the probe (8 iterations) times iterations 3-8:
    # 23 s spent, (26 - 23) / 0.5 = 6 more, N = 14. Timing all 8 (2.875 s/it) would give N = 9.
    warm = cosine_trainer(
        tmp_path / "warm",
        max_iters=1000,
        time_budget=26.0,
        budget_probe_iters=8,
        clock=WarmingClock(0.5, first=10.0, slow=2),
        schedule=WarmupCosine(max_iters=1000, warmup_iters=8),
    )
    assert warm.train()["iteration"] == 14 and warm.scheduler.lr_lambdas[0].max_iters == 14

    steps = WarmupMultiStep(max_iters=1000, milestones=(0.5, 0.9), warmup_iters=8)
    stepped = cosine_trainer(
        tmp_path / "steps",
        max_iters=1000,
        schedule=steps,
        time_budget=12.0,
        budget_probe_iters=8,
        clock=FakeClock(1.0),
    )
    stepped.iteration, stepped.train_seconds = 8, 8.0  # as after the probe
    budget = next(hook for hook in stepped.hooks if isinstance(hook, TimeBudget))
    budget.fit(stepped)  # N = 12 would move the first drop to iteration 6, which ran at the full LR
    assert stepped.max_iters == 18 and steps.steps[0] == 9  # 13-17 round the drop to 6, 7 or 8


def test_a_resume_follows_this_run_s_horizon_not_the_checkpoint_s(cosine_trainer, tmp_path):
    budgeted = cosine_trainer(
        tmp_path / "run",
        max_iters=50,
        time_budget=2.5,
        budget_probe_iters=3,
        clock=FakeClock(0.5),
    )
    budgeted.train()  # 5 iterations, the cosine at 0 from iteration 5 on
    longer = cosine_trainer(tmp_path / "run", max_iters=9)  # time_budget=null, 9 iterations
    longer.resume(tmp_path / "run" / "checkpoints" / "last.pt")
    assert longer.max_iters == 9 and longer.scheduler.lr_lambdas[0].max_iters == 9
    longer.train()
    assert longer.iteration == 9
