# The two commands a new user needs:  `make repro` (the whole pipeline on the CPU default)
# and `make test`. Both create .venv and install requirements.txt on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export TOKENIZERS_PARALLELISM := false

.PHONY: repro test bench compose clean-results

$(VENV)/.installed: requirements.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, alone: with 2.13.0 (CPU) installed, nothing below can pull the CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/python -c "import torch, transformers, lm_eval; print('torch', torch.__version__, 'transformers', transformers.__version__)"
	touch $@

# the scheduled `dvc repro` (stages/schedule.py): DVC decides what is stale, the scheduler runs it,
# DVC records it; on the CPU (hf engine) the variants run one after another through the same code
repro: $(VENV)/.installed
	python -m stages.schedule

test: $(VENV)/.installed
	pytest -q tests

bench: $(VENV)/.installed
	python bench/repro_time.py

compose: $(VENV)/.installed
	python -m stages.compose $(OVERRIDES)
