"""End to end: train.py and evaluate.py as a user runs them, on the embedded data."""

import itertools
import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from detector.cli import build_datasets
from detector.data.loader import infinite_train_batches
from detector.engine import allocator
from tests.conftest import run_script


def test_smoke_training_writes_metrics_checkpoints_and_events_then_evaluates(tmp_path, cache_dir):
    run = tmp_path / "run"
    result = run_script("train.py", "debug=smoke", f"data.cache_dir={cache_dir}", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {
        "AP",
        "AP50",
        "AP75",
        "APs",
        "APm",
        "APl",
        "per_class",
        "pr_curves",
        "errors",
        "status",
        "iteration",
        "precision",
        "machine",
        "skipped_steps",
        "replaced_images",
        "train_seconds",
        "images_per_second",
    }
    assert [row["class"] for row in metrics["per_class"]] == ["circle", "square", "triangle", "star", "cross", "ring"]
    assert sum(row["gt_boxes"] for row in metrics["per_class"]) > 8
    assert "per-class AP" in (run / "train.log").read_text()
    assert metrics["precision"] == {"used": "fp32", "requested": "off", "reason": "as requested"}  # debug=smoke
    assert metrics["iteration"] == 4 and metrics["images_per_second"] > 0 and metrics["status"] == "finished"
    chosen = allocator.preload()  # train.py restarted itself with the first installed allocator preloaded
    assert metrics["machine"]["allocator"] == (chosen[0] if chosen else "system")
    assert all(0.0 <= metrics[k] <= 100.0 or metrics[k] == -1.0 for k in ("AP", "AP50", "APl"))
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "checkpoints" / "best.pt").is_file()
    events = EventAccumulator(str(run / "tb"), size_guidance={IMAGES: 0})
    events.Reload()
    assert {f"eval/detections_{i}" for i in range(4)} <= set(events.Tags()["images"])  # predicted and true boxes
    assert events.Images("eval/detections_0")[-1].width == 128
    assert "eval/pr_curves" in events.Tags()["images"] and (run / "pr_curves.png").is_file()
    assert "eval/errors" in events.Tags()["images"] and (run / "errors.png").is_file()  # the TIDE breakdown
    assert events.Scalars("train/grad_norm")[-1].value > 0 and " grad " in (run / "train.log").read_text()
    star = next(row for row in metrics["per_class"] if row["class"] == "star")
    for name, tag in (("AP", "eval_per_class"), ("AP50", "eval_per_class_AP50"), ("AP75", "eval_per_class_AP75")):
        assert events.Scalars(f"{tag}/star")[-1].value == pytest.approx(star[name])  # the final evaluation's
    errors = metrics["errors"]
    assert set(errors["dAP"]) == {"Cls", "Loc", "Both", "Dupe", "Bkg", "Miss"} and sum(errors["count"].values()) > 0
    assert errors["AP50"] == pytest.approx(metrics["AP50"], abs=0.5)  # its AP50 is COCOeval's, up to max_dets
    assert len(metrics["pr_curves"]["AP50"]) == 101
    assert sum(metrics["pr_curves"]["AP50"]) / 101 == pytest.approx(metrics["AP50"], abs=0.01)
    session = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    ).session_start_info.hparams
    assert session["loss"].string_value == "FocalLoss" and session["loss.gamma"].number_value == 2.0
    assert session["overrides"].string_value == "debug=smoke" and session["model.backbone.depth"].number_value == 18
    assert session["model.head.reg_max"].string_value == "none" and session["model.prior_prob"].number_value == 0.01
    assert events.Scalars("hparam/AP")[-1].value == pytest.approx(metrics["AP"])  # the final metrics beside them
    assert "iter 4/4" in (run / "train.log").read_text()
    assert "AP50" in result.stdout
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["iteration"] == 4 and state["config"]["loss"]["gamma"] == 2.0 and len(state["config"]["classes"]) == 6

    evaluation = tmp_path / "eval"
    result = run_script(
        "evaluate.py",
        f"checkpoint={run / 'checkpoints' / 'last.pt'}",
        f"hydra.run.dir={evaluation}",
        "postprocess.score_thresh=0.01",
        "per_class=true",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "class" in result.stdout and "triangle" in result.stdout  # the per-class table, printed
    scored = json.loads((evaluation / "metrics.json").read_text())
    assert len(scored["per_class"]) == 6 and (evaluation / "pr_curves.png").is_file()
    assert len(scored["pr_curves"]["AP75"]) == 101
    assert (evaluation / "errors.png").is_file() and scored["errors"]["AP50"] == pytest.approx(scored["AP50"], abs=0.5)
    assert scored["iteration"] == 4 and set(scored) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    detections = json.loads((evaluation / "detections.json").read_text())
    assert isinstance(detections, list)
    assert all(d["score"] > 0.01 for d in detections)  # the command-line threshold replaced the saved 0.05
    assert all(set(d) == {"image_id", "category_id", "bbox", "score"} for d in detections)  # COCO results format

    # a group option and a key inside it replace the saved data config: here, a COCO root that is not there;
    # evaluation looks only for the validation split
    missing = tmp_path / "no-coco"
    result = run_script(
        "evaluate.py",
        f"checkpoint={run / 'checkpoints' / 'last.pt'}",
        "data=coco",
        f"data.root={missing}",
        f"hydra.run.dir={tmp_path / 'eval2'}",
    )
    assert result.returncode != 0 and f"{missing}/annotations/instances_val2017.json" in result.stderr
    assert "train2017" not in result.stderr.split("Lay out")[0]


def test_training_lowers_the_loss(smoke_trainer):
    trainer = smoke_trainer(max_iters=40)
    trainer.model.train()
    losses = [trainer.step()["loss"] for _ in range(40)]
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < 0.8 * first, losses


@pytest.mark.parametrize(  # GHM-C and GHM-R: one loss call per level, every call seen; GIoU: decoded boxes
    "loss,box_loss", [("focal", "smooth_l1"), ("ghm_c", "ghm_r"), ("focal", "giou")]
)
def test_gradient_diagnostics_do_not_change_the_step(compose_cfg, cache_dir, smoke_trainer, loss, box_loss):
    overrides = [f"loss={loss}", f"box_loss={box_loss}"]
    cfg = compose_cfg(["debug=smoke", f"data.cache_dir={cache_dir}", *overrides])
    train_set, _ = build_datasets(cfg.data)
    batch = next(infinite_train_batches(train_set, 2, 0, seed=0))
    results = []
    for diagnose in (False, True):
        trainer = smoke_trainer(*overrides, batches=lambda start: iter([batch]), max_iters=1)
        trainer.model.train()
        losses = trainer.step(diagnose)
        results.append((losses, {**trainer.model.state_dict(), **trainer.criterion.state_dict()}))  # loss EMAs too
    (plain, plain_state), (diagnosed, diagnosed_state) = results
    stats = diagnosed.pop("gradients")
    box_stats = diagnosed.pop("box_gradients", None)
    assert plain == diagnosed
    for name, value in plain_state.items():
        torch.testing.assert_close(diagnosed_state[name], value, rtol=0, atol=0, msg=name)
    assert stats.g_negative.total > stats.g_positive.total > 0
    assert stats.g_negative.total + stats.g_positive.total == plain["num_neg"] + plain["num_pos"]  # every element
    if box_loss == "giou":  # its inputs are boxes in pixels: no residual axis
        assert box_stats is None
    else:  # every coordinate of every positive, and a box gradient on them
        assert box_stats.g.total == 4 * plain["num_pos"] and box_stats.gradient_by_g.total > 0
        assert 0.0 < box_stats.scalars["box_mean_abs_residual"] < 10.0
    assert 0.0 < stats.scalars["easy_negative_gradient_share"] < 1.0
    assert 0.0 < stats.scalars.get("easy_negative_loss_share", 0.5) < 1.0 and (loss == "ghm_c") != (
        "easy_negative_loss_share" in stats.scalars
    )  # a per-level loss reports the gradient share only


def test_the_gradient_norm_is_taken_before_clipping_and_clipping_scales_every_gradient_to_the_limit(
    compose_cfg, cache_dir, smoke_trainer
):
    train_set, _ = build_datasets(compose_cfg(["debug=smoke", f"data.cache_dir={cache_dir}"]).data)
    batch = next(infinite_train_batches(train_set, 2, 0, seed=0))

    def one_step(**settings):
        trainer = smoke_trainer(batches=lambda start: iter([batch]), max_iters=1, **settings)
        trainer.model.train()
        trainer.step()
        grads = {name: p.grad.double() for name, p in trainer.model.named_parameters() if p.grad is not None}
        return trainer.grad_norm, grads

    def norm_of(grads):  # float64, by hand
        return float(torch.stack([g.square().sum() for g in grads.values()]).sum().sqrt())

    free_norm, free = one_step()
    norm = norm_of(free)
    assert free_norm.dtype == torch.float32 and float(free_norm) == pytest.approx(norm, rel=1e-5)
    limit = norm / 4
    clipped_norm, clipped = one_step(clip_grad_norm=limit)
    assert float(clipped_norm) == float(free_norm)  # the norm the step had, not the clipped one
    for name, g in free.items():
        torch.testing.assert_close(clipped[name], g * limit / (norm + 1e-6), rtol=1e-5, atol=1e-12)
    assert norm_of(clipped) == pytest.approx(limit, rel=1e-5)


def test_bf16_autocast_on_cpu_trains_with_float32_losses(compose_cfg, cache_dir, smoke_trainer):
    """One batch of 2, stepped on 8 times: bf16 on a CPU without bf16 kernels runs PyTorch's slow fallback
    (the backbone is frozen: its backward pass in bf16 was most of this test's time)."""
    train_set, _ = build_datasets(compose_cfg(["debug=smoke", f"data.cache_dir={cache_dir}"]).data)
    batch = next(infinite_train_batches(train_set, 2, 0, 0, 0))
    trainer = smoke_trainer(
        "model.backbone.frozen_stages=5", batches=lambda start: itertools.repeat(batch), amp="bf16", max_iters=8
    )
    seen = {}
    trainer.model.head.register_forward_hook(lambda module, args, output: seen.update(head=output["cls_logits"].dtype))
    trainer.criterion.register_forward_hook(lambda module, args, output: seen.update(loss=output["loss_cls"].dtype))
    losses = trainer.step()
    assert seen["head"] == torch.bfloat16 and seen["loss"] == torch.float32  # the network ran in bf16 ...
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # ... on float32 weights
    history = [losses["loss"]] + [trainer.step()["loss"] for _ in range(7)]
    assert all(torch.isfinite(torch.tensor(history))) and sum(history[-2:]) < 0.9 * sum(history[:2]), history


class CountingValidator:
    def __init__(self):
        self.calls = 0

    def __call__(self, model):
        self.calls += 1
        return {name: 12.5 for name in ("AP", "AP50", "AP75", "APs", "APm", "APl")}, "", []


def test_a_run_resumed_at_its_end_keeps_its_metrics_without_training_or_evaluating(smoke_trainer, tmp_path):
    """A sweep rerun with trainer.resume=auto: its finished jobs cost neither a step nor an evaluation."""

    def trainer_for(validator, batches=None):
        return smoke_trainer(validator=validator, batches=batches, max_iters=2, eval_period=0, log_period=1)

    validator = CountingValidator()
    first = trainer_for(validator).train()
    assert validator.calls == 1 and first["AP"] == 12.5 and first["iteration"] == 2
    written = (tmp_path / "metrics.json").read_text()

    again = trainer_for(validator, lambda start: pytest.fail("a finished run drew a batch"))
    again.resume(tmp_path / "checkpoints" / "last.pt")
    assert again.train() == json.loads(written) and validator.calls == 1
    assert (tmp_path / "metrics.json").read_text() == written

    (tmp_path / "metrics.json").unlink()  # killed between its last checkpoint and metrics.json: evaluated again
    resumed = trainer_for(validator, lambda start: pytest.fail("a finished run drew a batch"))
    resumed.resume(tmp_path / "checkpoints" / "last.pt")
    assert resumed.train()["AP"] == 12.5 and validator.calls == 2
