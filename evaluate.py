"""Evaluate a checkpoint: `python evaluate.py checkpoint=PATH [overrides ...]` (see README)."""

from detector.engine.allocator import reexec_preloaded

if __name__ == "__main__":  # mimalloc or jemalloc before torch loads (detector/engine/allocator.py)
    reexec_preloaded()

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from detector.cli import evaluate

    evaluate(cfg)


if __name__ == "__main__":
    main()
