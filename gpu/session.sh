#!/bin/bash
# One GPU session's experiment, logs under $OUT (the device tool's folder; default /tmp/out):
#   bash gpu/session.sh check        pytest -m gpu (the vLLM adapter for real) while the GPU fixture trains
#   bash gpu/session.sh verdict [--serial] [overrides…]   bench/gpu_verdict.py on the GPU preset, then collect
# The bundle must be installed (gpu/README.md). Every step's output goes to $OUT/<step>.log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
SITE=${GPU_SITE:-/var/tmp/gpu-site}
export PYTHONPATH=$PWD:$SITE VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 \
       HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if ! command -v python >/dev/null; then
  mkdir -p /var/tmp/bin && ln -sf "$(command -v python3)" /var/tmp/bin/python && export PATH=/var/tmp/bin:$PATH
fi
[ -d .git ] || { git init -q && git add -A >/dev/null 2>&1 && git -c user.name=gpu -c user.email=gpu@localhost commit -qm gpu; } \
  || python3 -m dvc config --local core.no_scm true
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader > "$OUT/gpu.txt"
case "${1:-}" in
  check)
    python3 -m pytest -m gpu -v tests/test_gpu.py > "$OUT/pytest_gpu.log" 2>&1 & t=$!
    { time (python3 -m evalgate compose preset=gpu && python3 -m dvc repro fixture workload quantize); } > "$OUT/fixture.log" 2>&1
    cp fixtures/metrics.json "$OUT/fixture_metrics.json" 2>/dev/null
    wait $t; echo "pytest -m gpu exit $?" >> "$OUT/pytest_gpu.log"
    tail -5 "$OUT/pytest_gpu.log"; tail -3 "$OUT/fixture.log"; cat "$OUT/fixture_metrics.json" ;;
  verdict)
    shift; serial=""; [ "${1:-}" = "--serial" ] && { serial=--serial; shift; }
    start=$(date +%s)
    timeout "${VERDICT_TIMEOUT:-3000}" python3 bench/gpu_verdict.py $serial --out "$OUT/verdict.json" "$@" > "$OUT/verdict.log" 2>&1; rc=$?
    python3 gpu/collect.py --seconds $(( $(date +%s) - start )) --command "bash gpu/session.sh verdict $serial $*" \
      > "$OUT/collect.log" 2>&1
    d=$(ls -dt docs/results/*/ | head -1); tar czf "$OUT/results.tgz" "$d" reports results/*/status.json 2>/dev/null
    echo "verdict exit $rc; collected $d"; tail -40 "$OUT/verdict.log" ;;
  *) echo "usage: gpu/session.sh check | verdict [--serial] [overrides…]"; exit 2 ;;
esac
