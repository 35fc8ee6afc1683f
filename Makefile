# make train  — create .venv if missing, install, train the default (synthetic data, CPU) within
#               TRAIN_BUDGET seconds of training steps (null: the recipe's full 1400 iterations)
# make test   — same set-up, then ruff (lint and format check: make lint) and the fast test suite (what CI runs)
# make test-slow — the heavier tests (longer training runs); make test-all — both
# make gpu-wheels — the pinned dependencies a GPU machine's Python may lack, as wheels in .whl/ (scripts/gpu_check.sh)
# make benchmark — ours against torchvision's RetinaNet (detector benchmark --task train; ARGS="--sizes 800x1333 ...")
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
ARGS ?=
TRAIN_BUDGET ?= 660

# The allocator that train, test-slow and test-all preload (detector/engine/allocator.py): jemalloc where
# the system has it (Debian: libjemalloc2), else mimalloc from its wheel (a dependency); glibc malloc
# page-faults on every large tensor. Expanded when a recipe runs, after install. The train benchmark
# chooses the allocator of its own child processes.
RUN_ENV = $(shell $(BIN)/python -m detector.engine.allocator)

.PHONY: install train test lint test-slow test-all benchmark gpu-wheels clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

train: install
	$(RUN_ENV) $(BIN)/python train.py trainer.time_budget=$(TRAIN_BUDGET) $(ARGS)

test: install lint
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test-slow: install
	$(RUN_ENV) $(BIN)/python -m pytest -m slow $(ARGS)

test-all: install
	$(RUN_ENV) $(BIN)/python -m pytest $(ARGS)

# For Python 3.12 on x86-64 Linux (the GPU machines' image has torch, torchvision, numpy, scipy, opencv, pillow,
# PyYAML, tensorboard, tqdm, pytest); antlr4's runtime is published as source only, so it is built here.
GPU_WHEELS := hydra-core==1.3.8 omegaconf==2.3.1 pycocotools==2.0.11 faster-coco-eval==1.8.0 albumentations==2.0.8 \
	albucore==0.0.24 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
	stringzilla==5.3.2 simsimd==6.5.16 hydra-joblib-launcher==1.2.0 hydra-submitit-launcher==1.2.0 submitit==1.5.4
gpu-wheels: install
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		--platform manylinux1_x86_64 -d .whl $(GPU_WHEELS)
	$(BIN)/python -m pip wheel --quiet --no-deps -w .whl antlr4-python3-runtime==4.9.3

benchmark: install
	$(BIN)/detector benchmark --task train $(ARGS)

clean:
	rm -rf .pytest_cache outputs multirun
