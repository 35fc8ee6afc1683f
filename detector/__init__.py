"""One-stage (RetinaNet-style) object detection, built to study its losses.

The package takes plain constructor arguments and never imports Hydra; `detector.cli` is the
only place where Hydra configs become objects.
"""

__version__ = "0.1.0"
