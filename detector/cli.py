"""The one place where Hydra configs become objects; `train.py` and `evaluate.py` call in here.

Everything is validated first (trainer settings, schedule, and the parts `build` makes, the model on
the meta device), so a bad value fails before any pretraining, or any data is generated or read.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Subset

from detector.data.coco import CocoDetection, CocoSplits, check_split
from detector.data.loader import eval_loader, infinite_train_batches
from detector.data.transforms import eval_transforms, train_transforms
from detector.engine import distributed
from detector.engine.checkpoint import CheckpointError
from detector.engine.errors import format_errors
from detector.engine.evaluator import RESULT_KEYS, CocoValidator, format_metrics, format_per_class, resolve_backend
from detector.engine.hparams import run_hparams
from detector.engine.inference import load_for_inference
from detector.engine.machine import describe_machine, machine_line
from detector.engine.optimizer import GROUP_KEYS, build_optimizer, check_group_settings
from detector.engine.pictures import error_figure, pr_curve_figure
from detector.engine.precision import resolve_precision
from detector.engine.schedule import lambda_scheduler
from detector.engine.trainer import Trainer, resolve_device
from detector.models.backbone import frozen_without_weights

log = logging.getLogger("detector")


def build(cfg: DictConfig, num_classes: int):
    """(model, criterion, postprocessor) from the `model`, `loss`, `box_loss`, `criterion` and
    `postprocess` config nodes; the model only predicts, the criterion owns matching and losses."""
    criterion = build_criterion(cfg)
    postprocessor = instantiate(cfg.postprocess)
    model = instantiate(cfg.model, num_classes=num_classes)
    return model, criterion, postprocessor


def build_criterion(cfg: DictConfig):
    """The criterion of `cfg`, normalising by the positive count averaged over the processes of a
    DDP run (the count itself outside one)."""
    return instantiate(
        cfg.criterion,
        cls_loss=instantiate(cfg.loss),
        box_loss=instantiate(cfg.box_loss),
        reduce_num_pos=distributed.mean_over_processes,
    )


def build_datasets(data: DictConfig) -> tuple[CocoDetection, CocoDetection]:
    """Training and validation sets; both paths are checked before either is read."""
    splits: CocoSplits = instantiate(data.prepare)
    train_paths, val_paths = check_split(splits, "train"), check_split(splits, "val")
    train_set = CocoDetection(
        *train_paths,
        train_transforms(list(data.train_min_sizes), data.max_size, data.flip_prob),
        filter_empty=data.filter_empty,
    )
    val_set = CocoDetection(*val_paths, eval_transforms(data.test_min_size, data.max_size))
    if train_set.category_ids != val_set.category_ids:
        raise ValueError(
            f"{splits.train_ann} and {splits.val_ann} have different categories: "
            f"{train_set.class_names} vs {val_set.class_names}"
        )
    return train_set, val_set


def build_val_dataset(data: DictConfig) -> CocoDetection:
    """The validation set alone: evaluation needs no training images."""
    splits: CocoSplits = instantiate(data.prepare)
    return CocoDetection(*check_split(splits, "val"), eval_transforms(data.test_min_size, data.max_size))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def output_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def validator_for(
    dataset: CocoDetection,
    data: DictConfig,
    postprocessor,
    device,
    amp_dtype,
    processes: distributed.Distributed | None = None,
    backend: str = "auto",
) -> CocoValidator:
    """Scores `dataset`; under DDP each process predicts every world_size-th image."""
    processes = processes or distributed.Distributed()
    share = Subset(dataset, range(processes.rank, len(dataset), processes.world_size)) if processes.enabled else dataset
    loader = eval_loader(
        share,
        data.eval_batch_size,
        data.num_workers,
        data.get("size_divisibility", 128),
        pin_memory=device.type == "cuda",
    )
    return CocoValidator(
        loader, dataset.coco, dataset.category_ids, postprocessor, device, amp_dtype, dataset.image_dir, backend
    )


def train(cfg: DictConfig) -> float:
    """Train as configured; returns the final AP (what a Hydra sweeper optimises). Under torchrun
    (or a multi-task submitit job) every process runs this; see `detector.engine.distributed`."""
    run_config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    trainer_cfg = cfg.trainer  # device, amp and resume are resolved here; the other keys are the loop's settings
    try:
        settings = instantiate(
            {key: value for key, value in trainer_cfg.items() if key not in ("device", "amp", "resume")}
        )
    except InstantiationException as error:  # TrainerSettings' own message, which names the key, not Hydra's wrapper
        if isinstance(error.__cause__, ValueError):
            raise error.__cause__ from None
        raise
    for key in ("batch_size", "eval_batch_size"):
        if cfg.data[key] < 1:
            raise ValueError(f"data.{key} must be >= 1, got {cfg.data[key]}")
    device = resolve_device(trainer_cfg.device)
    precision = resolve_precision(trainer_cfg.amp, device)
    resolve_backend(cfg.evaluation.backend)
    schedule = instantiate(cfg.schedule, max_iters=settings.max_iters)
    if (
        settings.time_budget is not None
        and settings.max_iters > settings.budget_probe_iters
        and getattr(schedule, "warmup_iters", 0) < settings.budget_probe_iters
    ):
        raise ValueError(
            f"trainer.time_budget fixes the iteration count after trainer.budget_probe_iters="
            f"{settings.budget_probe_iters} iterations, which must lie inside the warmup (schedule."
            f"warmup_iters={getattr(schedule, 'warmup_iters', 0)}) so that a rerun with that count is "
            "identical; lower trainer.budget_probe_iters or raise schedule.warmup_iters"
        )
    _refuse_frozen_random_backbone(cfg.model.backbone, trainer_cfg.resume)  # before minutes of pretraining
    check_group_settings(**{key: cfg.optim[key] for key in GROUP_KEYS if key in cfg.optim})
    _check_buildable(cfg)
    if cfg.get("pretrain") is not None:  # e.g. experiment=paper_cpu: its backbone, built once into the cache
        instantiate(cfg.pretrain)
    _check_weights_file(cfg.model)
    processes = distributed.setup(device.type)
    try:
        return _train(cfg, settings, device, precision, schedule, processes, run_config)
    finally:
        distributed.cleanup()


def _train(cfg, settings, device, precision, schedule, processes, run_config) -> float:
    if processes.enabled:
        if cfg.data.batch_size % processes.world_size:
            raise ValueError(
                f"data.batch_size={cfg.data.batch_size} is the global batch; it must be a multiple of "
                f"the {processes.world_size} processes"
            )
        if device.type == "cuda":
            device = torch.device("cuda", processes.local_rank)
        if not processes.is_main:
            _quiet_logging()
    out = distributed.broadcast_from_main(output_dir())  # one run directory, rank 0's
    precision = distributed.broadcast_from_main(precision)  # a timed choice (amp=auto) could differ between ranks
    seed_everything(cfg.seed)

    with distributed.main_first():  # rank 0 writes any dataset cache; the others then read it
        train_set, val_set = build_datasets(cfg.data)
    log.info(
        "data: %d train / %d val images, %d classes: %s",
        len(train_set),
        len(val_set),
        train_set.num_classes,
        ", ".join(train_set.class_names),
    )
    model, criterion, postprocessor = build(cfg, train_set.num_classes)
    log.info(
        "model: %.2fM parameters (%.2fM trainable)",
        sum(p.numel() for p in model.parameters()) / 1e6,
        sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
    )
    optimizer = build_optimizer(cfg.optim, model)
    run_config["classes"] = train_set.class_names

    group_ids = train_set.aspect_ratio_groups() if cfg.data.group_by_aspect_ratio else None

    def batches(start_iteration: int):
        return infinite_train_batches(
            train_set,
            cfg.data.batch_size,
            cfg.data.num_workers,
            cfg.seed,
            start_iteration,
            processes.rank,
            processes.world_size,
            group_ids,
            cfg.data.size_divisibility,
            pin_memory=device.type == "cuda",
        )

    trainer = Trainer(
        model,
        criterion,
        optimizer,
        lambda_scheduler(optimizer, schedule),
        batches=batches,
        validator=validator_for(
            val_set, cfg.data, postprocessor, device, precision.dtype, processes, cfg.evaluation.backend
        ),
        output_dir=out,
        settings=settings,
        batch_size=cfg.data.batch_size,
        device=device,
        amp=precision,
        distributed=processes,
        run_config=run_config,
        hparams=run_hparams(run_config, _sweep_overrides()),
    )
    resume_from = _resume_path(cfg.trainer.resume, out)
    if resume_from is not None:
        try:
            trainer.resume(resume_from)
        except CheckpointError:
            if processes.is_main and resume_from == out / "checkpoints" / "last.pt":
                _restore_launch_record(out)
            raise
    if processes.is_main:
        _keep_launch_record(out, replace=resume_from is None)
    budget = "" if settings.time_budget is None else f" at most, or what fits in {settings.time_budget:g} s"
    log.info(
        "training for %d iterations%s on %s (amp=%s, %d process%s); outputs in %s",
        settings.max_iters,
        budget,
        device,
        precision.amp,
        processes.world_size,
        "es" if processes.enabled else "",
        out,
    )
    log.info("machine: %s; precision %s (%s)", machine_line(describe_machine()), precision.name, precision.reason)
    metrics = trainer.train()
    if not processes.is_main:
        return float(metrics.get("AP", 0.0))
    print(
        f"\nCOCO box AP on the validation split after {metrics['iteration']} iterations "
        f"({metrics['train_seconds']:.0f} s of training):\n{format_metrics(metrics)}\nmetrics: {out / 'metrics.json'}"
    )
    return float(metrics.get("AP", 0.0))


def evaluate(cfg: DictConfig) -> dict:
    """Evaluate `cfg.checkpoint` with the config saved inside it; command-line overrides win."""
    loaded = load_for_inference(cfg.checkpoint, {key: OmegaConf.select(cfg, key) for key in _overridden_keys()})
    saved = loaded.config
    device = resolve_device(saved.trainer.device)
    precision = resolve_precision(saved.trainer.amp, device)
    val_set = build_val_dataset(saved.data)
    if loaded.classes != val_set.class_names:
        raise ValueError(
            f"checkpoint {cfg.checkpoint} was trained on classes {loaded.classes}, but "
            f"{val_set.ann_file} has {val_set.class_names}"
        )
    model, postprocessor = loaded.model, loaded.postprocessor  # no criterion: evaluation needs no losses
    model.to(device)
    backend = OmegaConf.select(saved, "evaluation.backend", default="auto")
    stats, table, detections = validator_for(
        val_set, saved.data, postprocessor, device, precision.dtype, backend=backend
    )(model)
    out = output_dir()
    (out / "detections.json").write_text(json.dumps([{key: d[key] for key in RESULT_KEYS} for d in detections]))
    metrics = {name: stats[name] for name in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
    metrics.update(
        iteration=loaded.iteration,
        precision=precision.as_dict(),
        machine=describe_machine(),
        checkpoint=str(Path(cfg.checkpoint).resolve()),
        per_class=stats["per_class"],
        pr_curves=stats["pr_curves"],
        errors=stats["errors"],
    )
    title = f"{Path(cfg.checkpoint).name}, iteration {loaded.iteration}"
    for name, figure in (
        ("pr_curves", pr_curve_figure(stats["pr_curves"], title)),
        ("errors", error_figure(stats["errors"], title)),
    ):
        if figure is not None:
            figure.savefig(out / f"{name}.png", dpi=110)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("evaluation of %s:\n%s", cfg.checkpoint, table.rstrip())
    log.info("per-class AP:\n%s", format_per_class(stats["per_class"]))
    log.info("errors (TIDE): %s", format_errors(stats["errors"]))
    per_class = f"\n{format_per_class(stats['per_class'])}\n" if cfg.per_class else ""
    print(f"\n{format_metrics(metrics)}\n{per_class}metrics: {out / 'metrics.json'}")
    return metrics


def _check_buildable(cfg: DictConfig) -> None:
    """`build` once on the meta device (no memory, no weights read), so that every value of the
    model, losses, criterion and postprocessor is checked before any pretraining or data work."""
    with torch.device("meta"):
        build(OmegaConf.merge(cfg, {"model": {"backbone": {"weights_path": None}}}), num_classes=1)


def _check_weights_file(model: DictConfig) -> None:
    """A missing backbone weights file is named before any data work (after the pretraining that
    may write it)."""
    weights_path = OmegaConf.select(model, "backbone.weights_path")
    if weights_path is not None and not Path(weights_path).expanduser().is_file():
        raise FileNotFoundError(
            f"model.backbone.weights_path={weights_path}: no such file. Place a torchvision ResNet "
            "state dict or one of this project's checkpoints there, or set it to null."
        )


def _refuse_frozen_random_backbone(backbone: DictConfig, resume: str | None) -> None:
    """Training must not freeze random layers in silence; a checkpoint to resume from (a path)
    brings its own weights."""
    if not str(backbone.get("_target_", "")).endswith("ResNetBackbone"):
        return
    problem = frozen_without_weights(
        backbone.get("depth", 50),
        backbone.get("norm", "frozen_bn"),
        backbone.get("frozen_stages", 2),
        backbone.get("weights_path"),
    )
    if problem and resume in (None, "auto"):
        raise ValueError(problem)


def _quiet_logging() -> None:
    """Ranks other than 0 log warnings to the console only: one train.log per run."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(logging.WARNING)
    logging.getLogger("detector").setLevel(logging.WARNING)


def _resume_path(resume: str | None, out: Path) -> Path | None:
    """`auto`: this run directory's last.pt if there is one (else start fresh); a path: that file."""
    if resume is None:
        return None
    if resume == "auto":
        last = out / "checkpoints" / "last.pt"
        if not last.exists():
            log.info("trainer.resume=auto: no %s yet; starting from scratch", last)
            return None
        return last
    return Path(resume)


def _keep_launch_record(out: Path, replace: bool) -> None:
    """Copy the `.hydra/` of the launch that trains here to checkpoints/hydra/: a new run's (`replace`), or
    the first accepted resume's of a run without one. Hydra rewrites `.hydra/` at every launch into the
    folder, before a resume there can be refused (`_restore_launch_record`)."""
    subdir, kept = HydraConfig.get().output_subdir, out / "checkpoints" / "hydra"
    if subdir is not None and (out / subdir).is_dir() and (replace or not kept.exists()):
        shutil.copytree(out / subdir, kept, dirs_exist_ok=True)


def _restore_launch_record(out: Path) -> None:
    """After a refused resume: put back the `.hydra/` of the run whose checkpoint this folder holds, so
    that its overrides and config (what `detector ablation-table` names it by) are not the refused launch's."""
    subdir, kept = HydraConfig.get().output_subdir, out / "checkpoints" / "hydra"
    if subdir is None or not kept.is_dir():
        log.warning("%s/%s now describes this refused launch, not the run whose checkpoint is there", out, subdir)
        return
    shutil.copytree(kept, out / subdir, dirs_exist_ok=True)
    log.info("%s/%s: the record of the run that wrote the checkpoint, put back", out, subdir)


def _sweep_overrides() -> list[str]:
    """The command line's overrides of this run, except paths and Hydra's own (what names a sweep row)."""
    ignored = ("hydra", "data.cache_dir", "data.root", "trainer.resume")
    return [o for o in HydraConfig.get().overrides.task if not o.lstrip("+~").startswith(ignored)]


def _overridden_keys() -> list[str]:
    """Config keys the user set on the command line (group choices first), except `checkpoint`."""
    keys = []
    for override in HydraConfig.get().overrides.task:
        key = override.split("=", 1)[0].lstrip("+~")
        if key != "checkpoint" and not key.startswith("hydra") and not override.startswith("~"):
            keys.append(key)
    return sorted(keys, key=lambda k: k.count("."))
