"""What only a GPU can check: CUDA autocast (fp16 with its scaler, bf16), the host synchronisations
of a training step, and the GPU's losses and detections against the CPU's. Marked `cuda`: they
skip without a GPU (`make test` runs them, and skips them, like any other fast test;
scripts/gpu_check.sh runs them on a GPU)."""

import pytest
import torch
from hydra.utils import instantiate

from detector.cli import build, build_datasets
from detector.data.loader import infinite_train_batches
from detector.engine import trainer as trainer_module
from detector.engine.optimizer import build_optimizer
from detector.engine.precision import resolve_precision
from detector.engine.schedule import lambda_scheduler
from detector.engine.settings import TrainerSettings
from detector.engine.trainer import Trainer
from detector.losses import criterion as criterion_module

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh)"),
]
CUDA = torch.device("cuda")


@pytest.fixture
def smoke(compose_cfg, cache_dir):
    cfg = compose_cfg(["debug=smoke", f"data.cache_dir={cache_dir}"])
    train_set, _ = build_datasets(cfg.data)
    return cfg, train_set


# the default, and the configurations whose criterion paths differ: per-level GHM, ATSS, IoU targets,
# EFL's state, and a box loss that takes the image size
CRITERION_PATHS = [
    [],
    ["loss=ghm_c", "box_loss=ghm_r"],
    ["matcher=atss"],
    ["loss=qfl"],
    ["loss=efl"],
    ["box_loss=mpdiou"],
]


def make_trainer(cfg, train_set, tmp_path, amp):
    torch.manual_seed(0)
    model, criterion, _ = build(cfg, train_set.num_classes)
    model.to(CUDA)
    criterion.to(CUDA)
    optimizer = build_optimizer(cfg.optim, model)
    return Trainer(
        model,
        criterion,
        optimizer,
        lambda_scheduler(optimizer, lambda iteration: 1.0),
        lambda start: infinite_train_batches(train_set, 2, 0, 0, start, pin_memory=True),
        validator=None,
        output_dir=tmp_path,
        settings=TrainerSettings(max_iters=10, channels_last=True),
        batch_size=2,
        device=CUDA,
        amp=resolve_precision(amp, CUDA),
    )


@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_cuda_training_steps_are_finite(smoke, tmp_path, amp):
    cfg, train_set = smoke
    trainer = make_trainer(cfg, train_set, tmp_path, amp)
    trainer.model.train()
    losses = [trainer.step()["loss"] for _ in range(6)]
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert trainer.scaler.is_enabled() == (amp == "fp16")
    assert trainer.grad_norm.is_cuda  # the loss log reads it only at its own steps
    assert amp == "fp16" or float(trainer.grad_norm) > 0  # fp16's first steps may overflow while its scale settles


@pytest.mark.parametrize("overrides", CRITERION_PATHS, ids=lambda o: " ".join(o) or "default")
def test_a_training_step_waits_for_the_gpu_only_where_the_code_says(
    compose_cfg, cache_dir, tmp_path, monkeypatch, overrides
):
    """Under torch.cuda.set_sync_debug_mode("error") every host synchronisation raises, except in
    the two places that wait by design: the criterion's row counts and the trainer's reading of
    the losses (its non-finite verdict)."""
    cfg = compose_cfg(["debug=smoke", f"data.cache_dir={cache_dir}", *overrides])
    train_set, _ = build_datasets(cfg.data)
    trainer = make_trainer(cfg, train_set, tmp_path, "bf16")
    trainer.model.train()
    trainer.step()  # warm-up: first-call allocations and lazy initialisations may wait

    def allowed(function):
        def call(*args, **kwargs):
            torch.cuda.set_sync_debug_mode(0)
            try:
                return function(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("error")

        return call

    monkeypatch.setattr(criterion_module, "row_counts", allowed(criterion_module.row_counts))
    monkeypatch.setattr(trainer_module.Trainer, "_reduce", allowed(trainer_module.Trainer._reduce))
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = trainer.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(torch.tensor(losses["loss"]))


def test_gpu_losses_and_detections_equal_the_cpus(smoke, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32 convolutions, as on the CPU
    cfg, train_set = smoke
    torch.manual_seed(0)
    model, criterion, _ = build(cfg, train_set.num_classes)
    postprocess = instantiate(cfg.postprocess, score_thresh=0.0)  # an untrained model scores about π = 0.01
    images, targets = next(infinite_train_batches(train_set, 2, 0, 0))
    model.eval()
    with torch.no_grad():
        on_cpu = model(images)
        on_gpu = model.to(CUDA)(images.to(CUDA))
        losses_cpu = criterion(on_cpu, targets)
        losses_gpu = criterion.to(CUDA)(on_gpu, targets)
    for key in ("loss_cls", "loss_box", "num_pos"):
        torch.testing.assert_close(losses_gpu[key].cpu(), losses_cpu[key], rtol=2e-3, atol=1e-4)
    sizes = [t["size"] for t in targets]
    for cpu, gpu in zip(postprocess(on_cpu, sizes), postprocess(on_gpu, sizes)):
        assert len(cpu["scores"]) == len(gpu["scores"]) == 100
        torch.testing.assert_close(gpu["boxes"].cpu(), cpu["boxes"], rtol=1e-3, atol=0.05)
        assert torch.equal(gpu["labels"].cpu(), cpu["labels"])
