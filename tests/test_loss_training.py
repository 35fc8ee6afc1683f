"""Every loss trains the real model through the real criterion: finite and improving on a fixed batch.

The classification term is judged by its own value; the box term by the L1 error of the predicted
deltas, the same for every box loss (IoU and delta losses are not comparable by value) except
GHM-R. GHM-R gives the few coordinates with small errors most of the weight (gradient density),
and from scratch on one batch it lowers its own objective while the L1 error of the rest grows;
for it the test asks that its own objective descends in the first steps. Alpha-IoU (α = 3) too:
its gradient 3·IoU² all but vanishes on the poorly placed boxes, so from scratch it improves the
well placed ones (the paper's point) while the L1 error of the others grows; for it the test asks
that its own objective descends over the run.

The backbone is frozen (`frozen_stages=5`): every loss reaches the model through the same head
outputs, and its backward pass is 85 % of a step here; the smoke training tests train it.
"""

import pytest
import torch
from hydra.utils import instantiate

from detector.cli import build, build_datasets
from detector.data.loader import infinite_train_batches
from detector.engine.optimizer import build_optimizer
from detector.losses import FocalLoss, L1Loss
from tests.conftest import CONFIGS


def options(group):
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


PAIRS = [(loss, "smooth_l1") for loss in options("loss")] + [("focal", box) for box in options("box_loss")]


@pytest.fixture(scope="module")
def fixed_batch(cache_dir):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=["debug=smoke", f"data.cache_dir={cache_dir}"])
    train_set, _ = build_datasets(cfg.data)
    torch.manual_seed(0)
    return next(infinite_train_batches(train_set, 2, 0, seed=0)), train_set.num_classes


def train_on_the_batch(compose_cfg, cache_dir, fixed_batch, overrides, judge_of, measure, steps=12):
    """Build the smoke model with `overrides` (its backbone frozen) and step it `steps` times on the fixed
    batch with the sum of its loss terms; returns `measure(outputs, terms, judge)` of every step, taken
    before its update, with `judge = judge_of(cfg, criterion)`."""
    (images, targets), num_classes = fixed_batch
    cfg = compose_cfg(["debug=smoke", "model.backbone.frozen_stages=5", f"data.cache_dir={cache_dir}", *overrides])
    torch.manual_seed(0)
    model, criterion, _ = build(cfg, num_classes)
    judge = judge_of(cfg, criterion)
    optimizer = build_optimizer(cfg.optim, model)
    model.train()
    history = []
    for _ in range(steps):
        outputs = model(images)
        terms = criterion(outputs, targets)
        total = sum(value for key, value in terms.items() if key.startswith("loss_"))
        assert torch.isfinite(total), terms
        with torch.no_grad():
            history.append(measure(outputs, terms, judge))
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    return history


@pytest.mark.parametrize("loss,box_loss", PAIRS, ids=[f"{a}+{b}" for a, b in PAIRS])
def test_loss_pair_trains(compose_cfg, cache_dir, fixed_batch, loss, box_loss):
    targets = fixed_batch[0][1]
    own = box_loss in ("ghm_r", "alpha_iou")

    def measure(outputs, terms, judge):
        box_error = terms["loss_box"].item() if own else judge(outputs, targets)["loss_box"].item()
        return terms["loss_cls"].item(), box_error

    history = train_on_the_batch(
        compose_cfg,
        cache_dir,
        fixed_batch,
        [f"loss={loss}", f"box_loss={box_loss}"],
        lambda cfg, criterion: instantiate(cfg.criterion, cls_loss=instantiate(cfg.loss), box_loss=L1Loss()),
        measure,
    )
    first, last = history[:3], history[-3:]
    assert sum(h[0] for h in last) < sum(h[0] for h in first), history
    if box_loss == "ghm_r":
        assert min(h[1] for h in history[1:4]) < 0.8 * history[0][1], history
    else:
        assert sum(h[1] for h in last) < sum(h[1] for h in first), history


def test_gfl_trains_its_three_terms(compose_cfg, cache_dir, fixed_batch):
    """The GFL row (QFL + GIoU + DFL on the distribution head): the box terms by their own values, the
    classification by the focal loss on one-hot targets (QFL's own value rises with its IoU targets: the
    integral boxes start 16 strides wide, at IoU near 0, and the targets grow as the boxes fit)."""
    targets = fixed_batch[0][1]
    history = train_on_the_batch(
        compose_cfg,
        cache_dir,
        fixed_batch,
        ["+row/modern_losses=gfl"],
        lambda cfg, criterion: instantiate(
            cfg.criterion, cls_loss=FocalLoss(), box_loss=criterion.box_loss, cls_target="onehot"
        ),
        lambda outputs, terms, judge: [
            judge(outputs, targets)["loss_cls"].item(),
            terms["loss_box"].item(),
            terms["loss_dfl"].item(),
        ],
    )
    first, last = torch.tensor(history[:3]).sum(0), torch.tensor(history[-3:]).sum(0)
    assert (last < first).all(), history
