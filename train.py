"""Train a RetinaNet: `python train.py [group=option ...] [key=value ...]` (see README)."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    from detector.cli import train

    return train(cfg)


if __name__ == "__main__":
    main()
