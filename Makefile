# Two commands do all set-up on a fresh machine:
#   make demo   -> virtualenv + CPU torch + grpolab, then the whole pipeline on the tiny model
#   make test   -> the same set-up, then the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
WORKDIR ?= demo
# two pytest workers (this project's CI machine has 2 cores); report+compare share one workspace
PYTEST_JOBS ?= 2
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast mlflow-server clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# CPU torch first (a local wheel here), so no dependency resolution can pull a multi-GB CUDA build.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/grpolab demo --workdir $(WORKDIR) --force

test: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -n $(PYTEST_JOBS) --dist loadgroup $(PYTEST_ARGS)

test-fast: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -n $(PYTEST_JOBS) --dist loadgroup -m "not e2e" $(PYTEST_ARGS)

mlflow-server: setup
	$(BIN)/mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlflow.db

clean:
	rm -rf $(WORKDIR) .pytest_cache
