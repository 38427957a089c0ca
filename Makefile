# Each target creates its own virtual environment and installs what it needs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned to the CPU build available offline; a bare "torch" would pull a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: demo test lint bench clean chromium gpu-wheels

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/kebench run

# The leaderboard's browser test needs Debian's chromium: installed here when missing and we are root
# with apt-get (as in CI); otherwise that one test is skipped and says why.
chromium:
	@command -v chromium >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
			|| echo "could not install chromium: the leaderboard browser test will be skipped"; \
	else echo "chromium missing and not installable here: the leaderboard browser test will be skipped"; fi

test: $(BIN)/.installed chromium
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: $(BIN)/.installed
	$(BIN)/kebench bench

# Wheels a lent GPU machine lacks (it has CUDA torch and no internet): Python 3.12, carried as .whl/
# (docs/models.md, "GPU"). Its own pyarrow, huggingface_hub and tokenizers fit these versions' ranges.
GPU_WHEELS := transformers==5.24.0 datasets==5.2.0 evaluate==0.4.6 dill==0.4.1 multiprocess==0.70.19 \
	fsspec==2026.9.0
gpu-wheels:
	rm -rf .whl
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)

clean:
	rm -rf $(VENV) .kebench-cache .whl
