# torchdepot: `make mirror` builds the mirror from mirror/mirror.yaml; `make test` runs the fast
# tests (not marked slow or e2e), `make test-all` every test, `make test-pythons` the fast tier on
# Python 3.10, 3.12 and 3.13 (venvs under .venvs/).
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
# The fast tier runs on pytest-xdist workers, one per core up to 4 (half its wall time is tests
# waiting on loopback servers and paced bytes); `make test WORKERS=0` runs it in one process.
WORKERS ?= auto
FAST   := -m "not e2e and not slow" -n $(WORKERS) --maxprocesses 4
# The fast tier's properties run 50 examples each (tests/conftest.py); test-all runs the dev
# profile's 200 locally and the full 2,000 under CI.
FAST_PROFILE ?= fast
PYENV_ROOT ?= $(HOME)/.pyenv
PYTHONS ?= 3.10.13 3.12.1 3.13.0
TEST_CACHE := $(HOME)/.cache/torchdepot-tests

.PHONY: venv mirror lock verify recipes test test-all test-pythons lint bench clean clean-cache

$(RUNTIME_STAMP): pyproject.toml
	@echo "make: bootstrapping $(VENV) (runtime dependencies; once, about 15 s)"
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -e . 2>&1 | grep -E --line-buffered '^(Collecting|Installing|Successfully|ERROR|error)' || true
	@$(PY) -c "import torchdepot" && touch $@

$(TEST_STAMP): $(RUNTIME_STAMP)
	@echo "make: adding the test dependencies to $(VENV)"
	$(PIP_INSTALL) -e '.[test]' 2>&1 | grep -E --line-buffered '^(Collecting|Installing|Successfully|ERROR|error)' || true
	@$(PY) -c "import pytest, hypothesis, xdist" && touch $@

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
	HYPOTHESIS_PROFILE=$${HYPOTHESIS_PROFILE:-$(FAST_PROFILE)} $(PY) -m pytest $(FAST) $(PYTEST_ARGS)

test-all: $(TEST_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# One venv per interpreter (pyenv's, by version), with pip in it as in .venv (the tests run
# `python -m pip config list`), the project installed editable with its test extra by pip, so the
# pip configuration (index, find-links, constraints) applies as for .venv; then the fast tier.
test-pythons: $(TEST_STAMP)
	@failed=""; for v in $(PYTHONS); do \
	  py=$(PYENV_ROOT)/versions/$$v/bin/python; dir=.venvs/py$$v; start=$$(date +%s); \
	  echo "make: Python $$v: $$dir"; \
	  if { [ -x $$dir/bin/pip ] || $$py -m venv $$dir; } \
	     && { $(PY) -m pip --python $$dir/bin/python install --disable-pip-version-check --quiet --no-compile -e '.[test]' 2>&1 \
	          | grep -v "is ignored: it is neither" || true; } \
	     && $$dir/bin/python -c "import torchdepot, pytest, hypothesis, xdist" \
	     && HYPOTHESIS_PROFILE=$${HYPOTHESIS_PROFILE:-$(FAST_PROFILE)} $$dir/bin/python -m pytest $(FAST) $(PYTEST_ARGS); \
	  then echo "make: Python $$v: fast tier passed in $$(( $$(date +%s) - start )) s"; \
	  else echo "make: Python $$v: FAILED after $$(( $$(date +%s) - start )) s"; failed="$$failed $$v"; fi; \
	done; \
	if [ -n "$$failed" ]; then echo "make: fast tier failed on Python$$failed"; exit 1; fi

lint: $(TEST_STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy torchdepot

bench: $(TEST_STAMP)
	$(TD) mirror --spec $(SPEC)   # bench/verify.py locks and verifies this mirror
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .venvs mirror/out recipes/out .pytest_cache

# The tests' download cache (the real torch wheel and its dependencies, about 400 MB), kept
# outside the repo so `make clean` does not force a new download; TORCHDEPOT_TEST_CACHE moves it.
clean-cache:
	rm -rf "$${TORCHDEPOT_TEST_CACHE:-$(TEST_CACHE)}"
