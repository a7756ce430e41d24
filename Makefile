# The two commands a new user needs:  `make repro` (the whole pipeline on the CPU default)
# and `make test`. Both create .venv, install requirements.txt and the package (`evalgate`) on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export TOKENIZERS_PARALLELISM := false

.PHONY: repro test lint format bench compose clean-results mutation llamacpp

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, alone: with 2.13.0 (CPU) installed, nothing below can pull the CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.txt
	# the package itself, editable: the `evalgate` command (its dependencies are the pins above)
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/python -c "import torch, transformers, lm_eval; print('torch', torch.__version__, 'transformers', transformers.__version__)"
	# optimum-quanto compiles its CPU kernels (a torch C++ extension) on first use; built here, once, so no
	# pipeline run pays for it: the compiler peaked at 1.5 GB RSS inside run@kv_int2 (600 MB without it)
	$(BIN)/python -c "from optimum.quanto.library.extensions import get_extension; get_extension('quanto_cpp').lib" 2>&1 | grep -v "^W\|Failed to load" || true
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed requirements-dev.txt
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

# llama.cpp's tools for engine llamacpp (llama-server, llama-quantize, llama-bench, llama-perplexity), built from
# PyPI's llama-cpp-python sdist into ~/.cache/evalgate/llama.cpp/ (one build per version, flags and CPU, shared
# by every clone; 10-35 min on 2 cores the first time, seconds after). The gguf stage builds them too if missing.
$(VENV)/.llamacpp: $(VENV)/.installed evalgate/gguf.py
	$(BIN)/python -m evalgate.gguf build
	touch $@

llamacpp: $(VENV)/.llamacpp

# the scheduled `dvc repro` (evalgate/repro.py): DVC decides what is stale, the scheduler runs it,
# DVC records it; on the CPU (hf engine) the variants run one after another through the same code
repro: $(VENV)/.installed
	evalgate repro

# lint first (seconds), then the tests; CI (.ci/run) runs exactly this. llama.cpp's tools are built first
# (once per machine): without them the llamacpp engine's tests would skip
test: lint $(VENV)/.llamacpp
	pytest -q tests

# ruff (settings in pyproject.toml): the lint rules on every file, the formatter on the files it owns
# (FORMATTED: the modules written since ruff came in; `make format` formats them)
FORMATTED := evalgate/cli.py evalgate/__main__.py evalgate/compose.py evalgate/repro.py evalgate/results.py \
	evalgate/quiet.py evalgate/tracking.py evalgate/config.py evalgate/faults.py evalgate/stages.py
lint: $(VENV)/.dev-installed
	ruff check .
	ruff format --check $(FORMATTED)

format: $(VENV)/.dev-installed
	ruff format $(FORMATTED)
	ruff check --fix .

bench: $(VENV)/.installed
	python bench/repro_time.py

compose: $(VENV)/.installed
	evalgate compose $(OVERRIDES)

# Mutation testing of stats/gate/sequential/fidelity with mutmut (settings in setup.cfg): not part of CI,
# 2½–5 min on 2 cores. Prints the survivors and the kill rate per module; docs/mutation.md explains each survivor.
MUTATION_JOBS ?= 2
mutation: $(VENV)/.dev-installed
	rm -rf mutants
	mutmut run --max-children $(MUTATION_JOBS) > /dev/null
	mutmut results
	mutmut results --all true | awk -F': ' '{split($$1, m, "."); mod = m[1] "." m[2]; gsub(/ /, "", mod); n[mod]++; \
		if ($$2 == "killed") k[mod]++} END {for (x in n) printf "%-20s %4d/%4d killed  %.1f%%\n", x, k[x], n[x], 100 * k[x] / n[x]}'
