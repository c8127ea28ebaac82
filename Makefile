# `make run` and `make test` each set up .venv on their own (Python 3.11 + pip are all they need).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARTIFACTS ?= artifacts
# One pytest worker per core (at most 4: each holds a TensorFlow runtime); a test file's tests stay
# on one worker, so its module fixtures (a trained model, a preprocess run) are built once; the
# slowest files go first (tests/conftest.py), so that no core idles at the end.
PYTEST_ARGS ?= --numprocesses=auto --maxprocesses=4 --dist=loadfile --no-loadscope-reorder

.PHONY: run test lint install bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/seq2seq run --data data/raw --artifacts $(ARTIFACTS) --config pipeline/embedded.yaml

# Imports point down (import-linter's contract in pyproject.toml) and ruff's small rule set.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/preprocess.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/quality.py

clean:
	rm -rf $(VENV) build *.egg-info
