# torchdepot: `make mirror` builds the mirror from mirror/mirror.yaml; `make test` runs the tests.
# Everything runs from a project virtualenv (.venv) bootstrapped from pyproject.toml:
# `make mirror` installs only the runtime dependencies; `make test` adds the test ones.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TD     := $(VENV)/bin/torchdepot
RUNTIME_STAMP := $(VENV)/.runtime-stamp
TEST_STAMP    := $(VENV)/.test-stamp
SPEC   ?= mirror/mirror.yaml
PYTEST_ARGS ?=
PIP_INSTALL := $(PY) -m pip install --disable-pip-version-check --progress-bar on

.PHONY: venv mirror lock verify recipes test lint bench clean

$(RUNTIME_STAMP): pyproject.toml
	@echo "make: bootstrapping $(VENV) (runtime dependencies; once, about 15 s)"
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -e . 2>&1 | grep -E --line-buffered '^(Collecting|Installing|Successfully|ERROR|error)' || true
	@$(PY) -c "import torchdepot" && touch $@

$(TEST_STAMP): $(RUNTIME_STAMP)
	@echo "make: adding the test dependencies to $(VENV)"
	$(PIP_INSTALL) -e '.[test]' 2>&1 | grep -E --line-buffered '^(Collecting|Installing|Successfully|ERROR|error)' || true
	@$(PY) -c "import pytest, hypothesis" && touch $@

venv: $(RUNTIME_STAMP)

mirror: $(RUNTIME_STAMP)
	$(TD) mirror --spec $(SPEC)

lock: $(RUNTIME_STAMP)
	$(TD) lock --spec $(SPEC)

verify: $(RUNTIME_STAMP)
	$(TD) verify

# `recipes build` needs the conda-build extra (py-rattler-build); installed once, with progress
CONDA_BUILD_STAMP := $(VENV)/.conda-build-stamp
$(CONDA_BUILD_STAMP): $(RUNTIME_STAMP)
	@echo "make: adding the conda-build extra (py-rattler-build) to $(VENV)"
	$(PIP_INSTALL) -e '.[conda-build]' 2>&1 | grep -E --line-buffered '^(Collecting|Installing|Successfully|ERROR|error)' || true
	@$(PY) -c "import rattler_build" && touch $@

recipes: $(CONDA_BUILD_STAMP)
	$(TD) recipes build

test: $(TEST_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(TEST_STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy torchdepot

bench: $(TEST_STAMP)
	$(TD) mirror --spec $(SPEC)   # bench/verify.py locks and verifies this mirror
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) mirror/out recipes/out .pytest_cache
