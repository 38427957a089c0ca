# Each target creates its own virtual environment and installs what it needs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned to the CPU build available offline; a bare "torch" would pull a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: demo test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/kebench run

test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: $(BIN)/.installed
	$(BIN)/kebench bench

clean:
	rm -rf $(VENV) .kebench-cache
