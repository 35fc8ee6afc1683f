# GPU training image.
#   docker build -t detector .
#   docker run --gpus all --shm-size 8g --user "$(id -u):$(id -g)" \
#       -v /datasets/coco:/data/coco:ro -v "$PWD/runs":/runs -v "$HOME/.cache/torch":/weights detector \
#       experiment=coco_r50_1x model.backbone.weights_path=/weights/hub/checkpoints/resnet50-0676ba61.pth
# Arguments are train.py overrides; any other command runs as given (torchrun, evaluate.py, scripts).
ARG BASE_IMAGE=pytorch/pytorch:2.14.1-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

# jemalloc: glibc malloc page-faults on every large activation tensor (see docs/speed.md).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libjemalloc2 \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    LD_PRELOAD=libjemalloc.so.2 \
    MALLOC_CONF=oversize_threshold:1,background_thread:true,dirty_decay_ms:-1,muzzy_decay_ms:-1 \
    COCO_ROOT=/data/coco \
    DETECTOR_CACHE=/runs/.cache \
    TORCH_HOME=/weights

WORKDIR /app
# Dependencies first, from the pinned constraints, so that source edits do not reinstall them.
COPY pyproject.toml constraints.txt README.md ./
COPY detector/__init__.py detector/__init__.py
RUN pip install -c constraints.txt . \
    && pip uninstall -y detector && rm -rf detector build detector.egg-info

COPY detector/ detector/
COPY configs/ configs/
COPY scripts/ scripts/
COPY train.py evaluate.py ./
COPY docker/entrypoint.sh /usr/local/bin/entrypoint.sh
# Editable: the tools find configs/ and docs/ beside the package (detector convert-torchvision, ablation-table)
RUN pip install --no-deps -e . && chmod 0755 /usr/local/bin/entrypoint.sh

RUN useradd --create-home --uid 1000 detector && mkdir -p /runs /weights && chown detector /runs /weights
USER 1000:1000
VOLUME ["/runs"]
WORKDIR /runs
ENTRYPOINT ["entrypoint.sh"]
CMD []
