#!/bin/bash
# The GPU run, on a host where the offline bundle is installed (gpu/README.md):
#   bash gpu/pipeline.sh [extra hydra overrides…]
# Composes preset=gpu into params.yaml, runs `dvc repro`, and writes docs/results/h200-<date>/.
set -euo pipefail
cd "$(dirname "$0")/.."
SITE=${GPU_SITE:-/var/tmp/gpu-site}
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH} VLLM_USE_FLASHINFER_SAMPLER=0 \
       HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# dvc.yaml's stages call `python`; a host with only python3 gets a shim
if ! command -v python >/dev/null; then
  mkdir -p /var/tmp/bin && ln -sf "$(command -v python3)" /var/tmp/bin/python && export PATH=/var/tmp/bin:$PATH
fi
dvc() { python3 -m dvc "$@"; }
[ -d .git ] || git init -q 2>/dev/null || dvc config --local core.no_scm true
start=$(date +%s)
python3 -m stages.compose preset=gpu "$@"
dvc repro
python3 gpu/collect.py --seconds $(( $(date +%s) - start )) --command "bash gpu/pipeline.sh $*"
