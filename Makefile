# Two commands a new user needs: `make quickstart` and `make test` (CI runs `make test`).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip -q
# torch is pinned to the CPU wheel on this machine's local disk; every install keeps it as a constraint.
CONSTRAINTS := -c constraints.txt

.PHONY: quickstart test test-fast install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install --upgrade pip
	$(PIP) install $(CONSTRAINTS) torch==2.13.0
	$(PIP) install $(CONSTRAINTS) -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install $(CONSTRAINTS) -e ".[test]"
	touch $@

install: $(VENV)/.installed

quickstart: $(VENV)/.installed
	$(BIN)/preftune quickstart

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q tests

test-fast: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -m "not slow" tests

clean:
	rm -rf $(VENV) runs .pytest_cache
