# The two commands of the README: `make run` (the pipeline) and `make test` (the suite).
# Both create .venv, install the project, and install Debian's Fashion-MNIST when it is missing;
# `make test` also installs Debian's PostgreSQL, which the tracking-server test starts a cluster of.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Where nvidia-smi lists a GPU, TensorFlow comes with its CUDA libraries from PyPI (the gpu extra:
# tensorflow[and-cuda]); elsewhere plain tensorflow, which on such a machine would see no GPU. The stamp names the
# choice, so a checkout that moves to a machine of the other kind installs again.
NVIDIA_GPU := $(shell nvidia-smi --list-gpus 2>/dev/null | grep -c '^GPU')
TENSORFLOW := $(if $(filter-out 0,$(NVIDIA_GPU)),gpu,cpu)
COMMA := ,
EXTRAS := $(if $(filter gpu,$(TENSORFLOW)),dev$(COMMA)gpu,dev)
INSTALLED := $(VENV)/.installed-$(TENSORFLOW)
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist
FASHION_MNIST := $(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz
# Debian keeps initdb and pg_ctl in /usr/lib/postgresql/<version>/bin, off PATH.
POSTGRESQL_BIN := /usr/lib/postgresql/*/bin/pg_ctl
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

export PATH := $(CURDIR)/$(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: run test setup data postgresql lint bench clean seeds

run: setup data
	dvc repro

# One worker per core (at most 4: each loads TensorFlow); the tests sharing a tiny dvc repro (groups tiny_run and
# tiny_run_faults, each building its own) stay on one worker per group.
test: setup data postgresql
	pytest -n auto --maxprocesses=4 --dist loadgroup

setup: $(INSTALLED)
	@if [ "$(TENSORFLOW)" = gpu ]; then \
		echo "TensorFlow: tensorflow[and-cuda], with its CUDA libraries (nvidia-smi lists $(NVIDIA_GPU) GPU(s))"; \
	else \
		echo "TensorFlow: plain tensorflow, for the CPU (nvidia-smi lists no GPU)"; \
	fi

$(INSTALLED): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))' \
		|| { echo "Python 3.11 or newer is needed: make PYTHON=python3.11"; exit 1; }
	@echo "setting up $(VENV): pip install -e '.[$(EXTRAS)]' (a few minutes the first time; log in $(VENV)/install.log)"
	@$(PYTHON) -m venv $(VENV)
	@# pip's and setuptools' banners (index locations, the editable-install notice) go to the log; a failure shows its end.
	@{ $(BIN)/pip install --upgrade pip && $(BIN)/pip install -e '.[$(EXTRAS)]'; } > $(VENV)/install.log 2>&1 \
		|| { tail -n 40 $(VENV)/install.log; echo "pip install failed: see $(VENV)/install.log"; exit 1; }
	@rm -f $(VENV)/.installed-*
	@touch $@

data: $(FASHION_MNIST)

$(FASHION_MNIST):
	@echo "installing Debian's dataset-fashion-mnist (apt-get; log in .apt-install.log)"
	@{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; } > .apt-install.log 2>&1 \
		|| { tail -n 20 .apt-install.log; echo "apt-get install failed: see .apt-install.log"; exit 1; }

# Checked on every `make test` (a wildcard cannot name a file target): apt runs only when pg_ctl is missing.
postgresql:
	@ls $(POSTGRESQL_BIN) > /dev/null 2>&1 || { \
		echo "installing Debian's postgresql (apt-get; log in .apt-install.log)"; \
		{ $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } \
			> .apt-install.log 2>&1 \
			|| { tail -n 20 .apt-install.log; echo "apt-get install failed: see .apt-install.log"; exit 1; }; \
	}

# The current params over N seeds (train.seed 1 to N), as N queued DVC experiments run one after the other, then
# their seed group aggregated (docs/tracking.md#seed-groups). A queued experiment runs in a temporary copy of the
# project: the -S options point its tracking store, artifacts and caches at this folder's (none is in the group key).
N ?= 3
seeds: setup data
	dvc exp run --queue -S 'train.seed=range(1,$(shell expr $(N) + 1))' $(shell $(BIN)/python -m pipeline.cli.seeds --queue-overrides)
	dvc exp run --run-all
	tl-seeds

lint: setup
	ruff check pipeline stages tests bench

clean:
	rm -rf build reports/*.png mlflow.db mlartifacts .cache
