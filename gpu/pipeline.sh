#!/bin/bash
# The GPU run, on a host where the offline bundle is installed (gpu/README.md):
#   bash gpu/pipeline.sh [--serial] [hydra overrides…]   compose preset=gpu, the scheduled dvc repro
#                                                          (python -m evalgate repro), then collect into
#                                                          docs/results/<card>-<date>/
#   bash gpu/pipeline.sh --finish                         stop a run early: gate + report + collect what exists
set -uo pipefail
cd "$(dirname "$0")/.."
SITE=${GPU_SITE:-/var/tmp/gpu-site}
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH} VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1 \
       HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# dvc.yaml's stages call `python`; a host with only python3 gets a shim
if ! command -v python >/dev/null; then
  mkdir -p /var/tmp/bin && ln -sf "$(command -v python3)" /var/tmp/bin/python && export PATH=/var/tmp/bin:$PATH
fi
finish() {  # gate and report over whatever variants finished (the others are rejected as not run)
  python3 -m evalgate gate --results results --out reports/gate.json
  python3 -m evalgate report --results results --gate reports/gate.json --out reports
  python3 gpu/collect.py --seconds $(( $(date +%s) - $(cat .gpu-start 2>/dev/null || date +%s) )) \
    --command "bash gpu/pipeline.sh" --note "${1:-}"
}
if [ "${1:-}" = "--finish" ]; then
  # stop only what this pipeline started: its own process group (recorded at start; the scheduler
  # stops its servers on SIGTERM), then any server group it recorded that is still alive
  [ -f .gpu-pgid ] && kill -TERM -- "-$(cat .gpu-pgid)" 2>/dev/null && sleep 10
  for f in results/*/server.pid; do [ -f "$f" ] && kill -KILL -- "-$(cat "$f")" 2>/dev/null; done
  finish "stopped early with --finish: variants without results are rejected as not run"; exit
fi
serial=""; [ "${1:-}" = "--serial" ] && { serial=--serial; shift; }
[ -d .git ] || git init -q 2>/dev/null || python3 -m dvc config --local core.no_scm true
date +%s > .gpu-start
python3 -m evalgate compose preset=gpu "$@" || exit 2
# its own session, so --finish (another shell) can stop exactly this run's processes
setsid python3 -m evalgate repro $serial & pid=$!
echo "$pid" > .gpu-pgid
if wait "$pid"; then
  python3 gpu/collect.py --seconds $(( $(date +%s) - $(cat .gpu-start) )) --command "bash gpu/pipeline.sh $serial $*"
else
  echo "the scheduled repro failed: gate and report over what finished"; finish "the run failed part-way"
fi
