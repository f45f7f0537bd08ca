# `make demo` and `make test` set up everything on a fresh machine: they create
# the virtual environment in .venv, install mor_jax with its extras, and run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[test,examples]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(BIN)/python examples/train_lm.py --preset demo

test: venv
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
