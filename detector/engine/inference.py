"""A trained model from its checkpoint: the one loading path of evaluate.py, detector predict and
detector export-onnx."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from detector.engine.checkpoint import checkpoint_format, load_checkpoint, load_model_weights


@dataclass
class InferenceModel:
    model: nn.Module  # in eval mode, on the CPU
    postprocessor: nn.Module
    config: DictConfig  # the checkpoint's config, the overrides applied
    classes: list[str]
    iteration: int


def load_for_inference(checkpoint: str | Path, overrides: dict | None = None) -> InferenceModel:
    """The model, postprocessor and config saved in `checkpoint` (read with `weights_only=True`).
    `overrides` maps dotted keys to values that replace the saved ones (e.g. postprocess.score_thresh).
    The backbone's `weights_path` is not read: the checkpoint holds every weight, so a model
    evaluates after its pretrained backbone file has gone."""
    state = load_checkpoint(checkpoint)
    checkpoint_format(state, checkpoint)  # every format so far holds the model and its config alike
    config = OmegaConf.create(state["config"])
    for key, value in (overrides or {}).items():
        OmegaConf.update(config, key, value, merge=False)
    classes = list(state["config"]["classes"])
    model_config = config.model
    if OmegaConf.select(model_config, "backbone.weights_path") is not None:
        model_config = OmegaConf.merge(model_config, {"backbone": {"weights_path": None}})
    model = instantiate(model_config, num_classes=len(classes))
    load_model_weights(model, state, checkpoint, {**OmegaConf.to_container(config, resolve=True), "classes": classes})
    return InferenceModel(model.eval(), instantiate(config.postprocess), config, classes, int(state["iteration"]))
