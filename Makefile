# Two entry points: `make demo` (train + evaluate the digits recipe) and `make test`.
# Each creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test test-all test-gpu lint install dev clean

install: $(VENV)/.installed
dev: $(VENV)/.installed-dev

# The stamp depends on pyproject.toml, so a changed dependency list reinstalls.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: install
	PATH="$(abspath $(BIN)):$$PATH" bash recipes/digits/run.sh

test: dev
	$(BIN)/python -m pytest -q -m "not slow and not gpu"

test-all: dev
	$(BIN)/python -m pytest -q

test-gpu: dev
	$(BIN)/python -m pytest -q -m gpu

lint: dev
	$(BIN)/ruff check asr tests benchmarks

clean:
	rm -rf exp outputs
