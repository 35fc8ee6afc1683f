# make train  — create .venv if missing, install, train the default (synthetic data, CPU) within
#               TRAIN_BUDGET seconds of training steps (null: the recipe's full 1400 iterations)
# make test   — same set-up, then the fast test suite (what CI runs)
# make test-slow — the heavier tests (longer training runs)
# make benchmark — ours against torchvision's RetinaNet (scripts/benchmark.py; ARGS="--sizes 800x1333 ...")
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
ARGS ?=
TRAIN_BUDGET ?= 660

# jemalloc, when installed (Debian: libjemalloc2), avoids a page fault on every large tensor.
JEMALLOC := $(firstword $(wildcard /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 /usr/lib/aarch64-linux-gnu/libjemalloc.so.2 /usr/lib/libjemalloc.so.2))
ifneq ($(JEMALLOC),)
RUN_ENV := LD_PRELOAD=$(JEMALLOC) MALLOC_CONF=oversize_threshold:1,background_thread:true,dirty_decay_ms:-1,muzzy_decay_ms:-1
endif

.PHONY: install train test test-slow benchmark clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

train: install
	$(RUN_ENV) $(BIN)/python train.py trainer.time_budget=$(TRAIN_BUDGET) $(ARGS)

test: install
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

test-slow: install
	$(RUN_ENV) $(BIN)/python -m pytest -m slow $(ARGS)

benchmark: install
	$(BIN)/python scripts/benchmark.py $(ARGS)

clean:
	rm -rf .pytest_cache outputs multirun
