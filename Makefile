# One command sets everything up and runs the demo; one more runs the tests.
#   make demo       venv + package + Fashion-MNIST (Debian package), then `fnnp-opt run`
#   make test       the same set-up, then the unit tier: in-process tests, a few minutes (what to run before a commit)
#   make test-all   the same set-up, then every tier: unit, integration (whole runs in-process), system (processes,
#                   signals, torchrun, PostgreSQL if installed, the dashboard) and zoo (the largest torchvision builders)
#   make typecheck  the same set-up, then mypy over fnnp_opt (settings in pyproject.toml)
#   make docs       the documentation site (mkdocs.yml) served on 127.0.0.1:8000; make docs-build builds it strictly
# The tiers are described in tests/conftest.py; JOBS test processes run at once (pytest-xdist), one thread each,
# each taking whole test modules.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
NEED_GB ?= 7
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
JOBS ?= 2
PYTEST := OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(JOBS) --dist loadscope

.PHONY: setup dataset demo test test-all typecheck dashboard docs docs-build clean

$(BIN)/fnnp-opt: pyproject.toml
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); \
	if [ ! -d $(VENV) ] && [ "$$free" -lt $(NEED_GB) ]; then \
		echo "setup: the venv needs about $(NEED_GB) GB of free disk (torch's CUDA build), only $$free GB free here; free some and rerun" >&2; \
		exit 1; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

$(FMNIST):
	$(SUDO) apt-get update -q
	$(SUDO) apt-get install -y -q dataset-fashion-mnist

setup: $(BIN)/fnnp-opt $(FMNIST)

dataset: $(FMNIST)

demo: setup
	$(BIN)/fnnp-opt run

test: setup
	$(PYTEST) -m unit

test-all: setup
	$(PYTEST) -m "unit or integration or system or zoo"

typecheck: setup
	$(BIN)/python -m mypy

dashboard: setup
	$(BIN)/fnnp-opt dashboard

$(BIN)/mkdocs: $(BIN)/fnnp-opt
	$(BIN)/python -m pip install -q -e '.[docs]'
	touch $@

docs: $(BIN)/mkdocs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000

docs-build: $(BIN)/mkdocs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf runs site .mypy_cache studies/*.db studies/*.db-wal studies/*.db-shm studies/*.log studies/*.journal studies/*.lock studies/latency-cache studies/artifacts
