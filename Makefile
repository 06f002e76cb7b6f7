# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: run test lint format bench demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall whenever pyproject.toml changes; the stamp files record what is installed.
# `make run` needs the service's parts: the base install is only the client and the verifiers.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[server]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(VENV)/.installed $@

run: $(VENV)/.installed
	$(BIN)/exchange serve --host $(HOST) --port $(PORT)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check exchange tests bench
	$(BIN)/ruff format --check exchange tests bench
	$(BIN)/mypy exchange tests bench
	$(BIN)/lint-imports

# The suite waits on servers, databases and subprocesses more than it computes: four workers
# on two cores keep `make test` within its time budget (PYTEST_WORKERS=0 runs it in one process).
PYTEST_WORKERS ?= 4

test: lint
	$(BIN)/pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

format: $(VENV)/.installed-dev
	$(BIN)/ruff format exchange tests bench
	$(BIN)/ruff check --fix exchange tests bench

bench: $(VENV)/.installed-dev
	@for script in bench/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

demo: $(VENV)/.installed
	$(BIN)/exchange demo

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build *.egg-info
