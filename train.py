"""Train a RetinaNet: `python train.py [group=option ...] [key=value ...]` (see README)."""

from detector.engine.allocator import reexec_preloaded

if __name__ == "__main__":  # mimalloc or jemalloc before torch loads (detector/engine/allocator.py)
    reexec_preloaded()

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    from detector.cli import train

    return train(cfg)


if __name__ == "__main__":
    main()
