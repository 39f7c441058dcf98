# torchdepot: `make mirror` builds the mirror from mirror/mirror.yaml; `make test` runs the tests.
# Everything runs from a project virtualenv (.venv) bootstrapped from pyproject.toml.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TD     := $(VENV)/bin/torchdepot
STAMP  := $(VENV)/.installed-stamp
SPEC   ?= mirror/mirror.yaml
PYTEST_ARGS ?=

.PHONY: venv mirror lock verify recipes test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

mirror: $(STAMP)
	$(TD) mirror --spec $(SPEC)

lock: $(STAMP)
	$(TD) lock --spec $(SPEC)

verify: $(STAMP)
	$(TD) verify

recipes: $(STAMP)
	$(TD) recipes build

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) mirror/out recipes/out .pytest_cache
