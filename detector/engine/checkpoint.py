"""Checkpoints: written atomically, read with `weights_only=True` (no code runs on load)."""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

# The layout of a checkpoint: a training one (Trainer.state_dict), or one that holds only the model and
# its config (detector convert-torchvision). 1: before the run's status (skipped steps, non-finite steps
# in a row, replaced images), its horizon (max_iters, budget_fixed) and the generators' states were
# saved; `upgrade_training_state` fills them in.
CHECKPOINT_FORMAT = 2


class CheckpointError(RuntimeError):
    pass


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`:
    a crash leaves either the old checkpoint or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict:
    """Load on CPU with `weights_only=True`; a truncated file or one holding arbitrary objects
    (a pickle that would run code) is refused with a CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain containers; refusing to "
            f"load it (weights_only=True): {str(error).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt?): {error}") from None


def checkpoint_format(state: dict, path: str | Path) -> int:
    """The format `state` was written in (1 before the key existed); one written by a newer version
    of this code is refused."""
    version = state.get("format", 1)
    if version > CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {version}; this code reads formats up to {CHECKPOINT_FORMAT}. "
            "Update the code (git pull) to read it."
        )
    return version


def upgrade_training_state(state: dict, path: str | Path, max_iters: int) -> dict:
    """`state` in the current CHECKPOINT_FORMAT: an older training checkpoint gets what its format
    lacked (no steps skipped, none non-finite, no images replaced, this run's horizon, no generator
    state); one written by a newer version of this code is refused."""
    if checkpoint_format(state, path) == 1:
        state = {
            "skipped_steps": 0,
            "nonfinite_in_a_row": 0,
            "replaced_images": [],
            "max_iters": max_iters,
            "budget_fixed": False,
            "rng": None,
            **state,
            "format": CHECKPOINT_FORMAT,
        }
    return state


def capture_rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) generator states as tensors and numbers, so that a
    checkpoint holding them still loads with `weights_only=True`."""
    version, python_state, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "python": {"version": version, "state": torch.tensor(python_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    python, numpy = state["python"], state["numpy"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
    np.random.set_state(
        (numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"], numpy["has_gauss"], numpy["cached"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_model_weights(model: torch.nn.Module, state: dict, path: str | Path, config: dict | None = None) -> None:
    """Load `state["model"]` into `model`, or raise a CheckpointError that says which tensors do
    not fit, which settings differ between the checkpoint's config and `config`, and how to
    start from the checkpoint's backbone instead."""
    ours, theirs = model.state_dict(), state["model"]
    reshaped = sorted(k for k in ours.keys() & theirs.keys() if ours[k].shape != theirs[k].shape)
    missing, unexpected = sorted(ours.keys() - theirs.keys()), sorted(theirs.keys() - ours.keys())
    saved_classes, classes = (state.get("config") or {}).get("classes"), (config or {}).get("classes")
    renamed = saved_classes is not None and classes is not None and list(saved_classes) != list(classes)
    if not (reshaped or missing or unexpected or renamed):
        model.load_state_dict(theirs)
        return
    lines = [f"{k}: {tuple(theirs[k].shape)} in the checkpoint, {tuple(ours[k].shape)} here" for k in reshaped[:5]]
    if missing:
        lines.append(f"{len(missing)} tensors missing from the checkpoint, e.g. {missing[:3]}")
    if unexpected:
        lines.append(f"{len(unexpected)} tensors this model does not have, e.g. {unexpected[:3]}")
    if renamed:
        lines.append(f"classes {list(saved_classes)[:6]}… in the checkpoint, {list(classes)[:6]}… here")
    saved = state.get("config") or {}
    differences = [
        f"{key}: {a!r} in the checkpoint, {b!r} here"
        for key, (a, b) in _config_differences(saved, config or {}).items()
    ]
    raise CheckpointError(
        f"{path} was trained with a different model or classes and does not fit this one:\n  "
        + "\n  ".join(lines)
        + ("\nSettings that differ:\n  " + "\n  ".join(differences[:10]) if differences else "")
        + f"\nTo fine-tune from it, start a new run with model.backbone.weights_path={path} (loads its backbone "
        "only; the FPN and heads start fresh), or match the settings above to continue or evaluate it."
    )


# What a resumed run may set differently from the run that wrote its checkpoint: how long and how it
# runs, where its files are and how it is evaluated. Any other difference changes what is trained.
RESUME_MAY_CHANGE = (
    "trainer.",
    "evaluation.",
    "postprocess.",
    "data.cache_dir",
    "data.prepare.cache_dir",
    "data.root",
    "data.num_workers",
    "data.eval_batch_size",
    "pretrain.out",
    "model.backbone.weights_path",
)
RESUME_MUST_KEEP = ("trainer.clip_grad_norm", "trainer.sync_bn")


def check_same_training(saved: dict, current: dict, path: str | Path) -> None:
    """Refuse to resume from `path` when its run config `saved` and this run's `current` differ in a
    setting that changes what is trained (the loss, model, data, optimizer, schedule, seed, …): a
    CheckpointError naming each one. Keys that only one of them has (a setting added to or removed
    from the code since) are not compared; nor is anything in RESUME_MAY_CHANGE."""
    flat_saved, flat_current = _flatten_config(saved), _flatten_config(current)
    differences = [
        f"{key}: {flat_saved[key]!r} in the checkpoint, {flat_current[key]!r} here"
        for key in sorted(flat_saved.keys() & flat_current.keys())
        if flat_saved[key] != flat_current[key] and (key in RESUME_MUST_KEEP or not key.startswith(RESUME_MAY_CHANGE))
    ]
    if differences:
        raise CheckpointError(
            f"{path} was written by a run with other settings; resuming it here would train something else:\n  "
            + "\n  ".join(differences[:10])
            + (f"\n  … and {len(differences) - 10} more" if len(differences) > 10 else "")
            + "\nTo continue that run, rerun it with its own settings (its .hydra/overrides.yaml); to start this "
            "one, give it another directory (hydra.run.dir=…, or hydra.sweep.dir=… for a sweep)."
        )


def _config_differences(saved: dict, current: dict) -> dict[str, tuple]:
    """Differing `model.*` values and class lists of two run configs."""
    flat_saved, flat_current = _flatten(saved.get("model", {}), "model"), _flatten(current.get("model", {}), "model")
    differences = {
        k: (flat_saved.get(k), flat_current.get(k))
        for k in sorted(flat_saved.keys() | flat_current.keys())
        if flat_saved.get(k) != flat_current.get(k)
    }
    if "classes" in saved and "classes" in current and list(saved["classes"]) != list(current["classes"]):
        differences["classes"] = (f"{len(saved['classes'])} classes", f"{len(current['classes'])} classes")
    return differences


def _flatten_config(config: dict) -> dict:
    """{"model.head.channels": 64, "seed": 0, …}: every leaf of a run config under its dotted key."""
    return {key: value for name, child in config.items() for key, value in _flatten(child, name).items()}


def _flatten(node, prefix: str) -> dict:
    if not isinstance(node, dict):
        return {prefix: node}
    return {key: value for name, child in node.items() for key, value in _flatten(child, f"{prefix}.{name}").items()}
