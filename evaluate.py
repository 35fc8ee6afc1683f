"""Evaluate a checkpoint: `python evaluate.py checkpoint=PATH [overrides ...]` (see README)."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from detector.cli import evaluate

    evaluate(cfg)


if __name__ == "__main__":
    main()
