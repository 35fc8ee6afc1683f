"""A run's hyperparameters and final metrics for TensorBoard's HParams dashboard, so that a whole
multirun compares in the browser (`tensorboard --logdir multirun/NAME`)."""

from __future__ import annotations

from torch.utils.tensorboard import SummaryWriter

SECTIONS = ("loss", "box_loss", "optim", "schedule", "criterion.matcher")
MODEL_KEYS = (  # what tells two models of this project apart
    "backbone.depth",
    "backbone.norm",
    "backbone.frozen_stages",
    "fpn.out_channels",
    "head.channels",
    "head.norm",
    "head.reg_max",
    "prior_prob",
)
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def run_hparams(run_config: dict, overrides: list[str] | None = None) -> dict[str, float | int | str | bool]:
    """The run's choices flattened to scalars: each section's class name and parameters (e.g.
    `loss`: "FocalLoss", `loss.gamma`: 2.0), the model's MODEL_KEYS (null as "none"), the batch size, the seed,
    and the command-line overrides that make it a sweep row (`overrides`, one string)."""
    hparams: dict[str, float | int | str | bool] = {}
    for section in SECTIONS:
        node = run_config
        for key in section.split("."):
            node = node.get(key, {}) if isinstance(node, dict) else {}
        for key, value in node.items() if isinstance(node, dict) else ():
            if key == "_target_":
                hparams[section] = str(value).rsplit(".", 1)[-1]
            elif not key.startswith("_") and isinstance(value, (int, float, str, bool)):
                hparams[f"{section}.{key}"] = value
            elif isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
                hparams[f"{section}.{key}"] = str(list(value))
    for path in MODEL_KEYS:
        node, keys = run_config.get("model", {}), path.split(".")
        for key in keys[:-1]:
            node = node.get(key, {})
        if keys[-1] in node:
            value = node[keys[-1]]
            hparams[f"model.{path}"] = "none" if value is None else value
    hparams["data.batch_size"] = run_config.get("data", {}).get("batch_size", 0)
    hparams["seed"] = run_config.get("seed", 0)
    hparams["overrides"] = " ".join(overrides or []) or "(defaults)"
    return hparams


def log_hparams(writer: SummaryWriter, hparams: dict, metrics: dict) -> None:
    """Write `hparams` with the final `metrics` (those of METRICS it holds) into the run's own event folder."""
    values = {f"hparam/{name}": float(metrics[name]) for name in METRICS if name in metrics}
    writer.add_hparams(hparams, values, run_name=".")
