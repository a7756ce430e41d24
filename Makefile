# The two commands a new user needs:  `make repro` (the whole pipeline on the CPU default)
# and `make test`. Both create .venv and install requirements.txt on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export TOKENIZERS_PARALLELISM := false

.PHONY: repro test bench compose clean-results mutation llamacpp

$(VENV)/.installed: requirements.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, alone: with 2.13.0 (CPU) installed, nothing below can pull the CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/python -c "import torch, transformers, lm_eval; print('torch', torch.__version__, 'transformers', transformers.__version__)"
	touch $@

# llama.cpp's tools for engine llamacpp (llama-server, llama-quantize, llama-bench, llama-perplexity), built from
# PyPI's llama-cpp-python sdist into ~/.cache/evalgate/llama.cpp/ (one build per version, flags and CPU, shared
# by every clone; ~10 min on 2 cores the first time, seconds after). The gguf stage builds them too if missing.
$(VENV)/.llamacpp: $(VENV)/.installed evalgate/gguf.py
	$(BIN)/python -m evalgate.gguf build
	touch $@

llamacpp: $(VENV)/.llamacpp

# the scheduled `dvc repro` (stages/schedule.py): DVC decides what is stale, the scheduler runs it,
# DVC records it; on the CPU (hf engine) the variants run one after another through the same code
repro: $(VENV)/.installed
	python -m stages.schedule

test: $(VENV)/.installed $(VENV)/.llamacpp
	pytest -q tests

bench: $(VENV)/.installed
	python bench/repro_time.py

compose: $(VENV)/.installed
	python -m stages.compose $(OVERRIDES)

# Mutation testing of stats/gate/sequential/fidelity with mutmut (settings in setup.cfg): not part of CI,
# 2½–5 min on 2 cores. Prints the survivors and the kill rate per module; docs/mutation.md explains each survivor.
MUTATION_JOBS ?= 2
mutation: $(VENV)/.installed requirements-dev.txt
	$(BIN)/pip install -q -r requirements-dev.txt
	rm -rf mutants
	mutmut run --max-children $(MUTATION_JOBS) > /dev/null
	mutmut results
	mutmut results --all true | awk -F': ' '{split($$1, m, "."); mod = m[1] "." m[2]; gsub(/ /, "", mod); n[mod]++; \
		if ($$2 == "killed") k[mod]++} END {for (x in n) printf "%-20s %4d/%4d killed  %.1f%%\n", x, k[x], n[x], 100 * k[x] / n[x]}'
