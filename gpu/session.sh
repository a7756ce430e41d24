#!/bin/bash
# One GPU session's experiments on a lent machine whose calls are capped (10 min each) and whose
# working tree is re-sent on every call. The work runs in a persistent copy ($WK, default
# /var/tmp/wk) that keeps DVC's outputs, cache and dvc.lock between calls, in its own process session
# (setsid), so one experiment can span several calls:
#   bash gpu/session.sh check                     pytest -m gpu (the vLLM adapter for real) while the fixture trains
#   bash gpu/session.sh start NAME [--serial] [overrides…]   start bench/gpu_verdict.py in the background
#   bash gpu/session.sh poll [SECONDS]            wait for it (default 540 s), copy its logs to $OUT
#   bash gpu/session.sh fresh                     forget the variants' results (to time the same variants again)
#   bash gpu/session.sh bench NAME SCRIPT [args…]  the inputs (fixture, workload) of preset=gpu, then
#                                                 `python bench/SCRIPT args… --out …/bench.json` in the background
#   bash gpu/session.sh pair NAME [overrides…]    two GPUs: the inputs once (GPU 0), then on that one fixture the
#                                                 serial run (GPU 1, in a copy $WK-serial) beside the scheduled run
#                                                 (GPU 0), RUNS times (default 2, `fresh` between); poll packs all
# Each experiment NAME logs to $WK/out/NAME/ and ends with docs/results/<card>-<date>[-n]/ (collect.py)
# packed as $OUT/NAME.tgz. The bundle must be installed first (gpu/README.md).
set -uo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
WK=${WK:-/var/tmp/wk}; mkdir -p "$WK/out"
SITE=${GPU_SITE:-/var/tmp/gpu-site}
export PYTHONPATH=$WK:$SITE VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 \
       HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if ! command -v python >/dev/null; then   # dvc.yaml's stages call `python`
  mkdir -p /var/tmp/bin && ln -sf "$(command -v python3)" /var/tmp/bin/python && export PATH=/var/tmp/bin:$PATH
fi

# what DVC wrote in the copy and git also tracks (dvc.lock, the uncached metrics outs): the copy's own
# version wins over this call's tree, or DVC would see the fixture's output changed and train it again
# (seen 2026-11-26: a second experiment retrained the fixture, so its verdicts were on another model)
KEEP="dvc.lock fixtures/metrics.json reports/variants.json"
sync_tree() {  # this call's tree over the persistent copy
  mkdir -p "$WK/.keep"; for f in $KEEP; do [ -f "$WK/$f" ] && cp "$WK/$f" "$WK/.keep/${f//\//__}"; done
  (cd "$SRC" && tar --exclude=./.git --exclude=./.gpu-bundle --exclude=./.keep -cf - .) | tar -xf - -C "$WK"
  for f in $KEEP; do [ -f "$WK/.keep/${f//\//__}" ] && mv "$WK/.keep/${f//\//__}" "$WK/$f"; done
  cd "$WK" || exit 1
  [ -d .git ] || { git init -q && git add -A >/dev/null 2>&1 && git -c user.name=gpu -c user.email=gpu@localhost commit -qm gpu; } \
    || python3 -m dvc config --local core.no_scm true
}

begin() {  # an experiment NAME in the copy: refused while another runs; its folder, the card it meets
  sync_tree
  [ -f out/running ] && { echo "already running: $(cat out/running)"; exit 1; }
  mkdir -p "out/$1"; echo "$1" > out/running
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader > "out/$1/gpu.txt"
}

case "${1:-}" in
  check)
    sync_tree
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader > "$OUT/gpu.txt"
    python3 -m pytest -m gpu -v tests/test_gpu.py > "$OUT/pytest_gpu.log" 2>&1
    echo "pytest -m gpu exit $?" >> "$OUT/pytest_gpu.log"; tail -8 "$OUT/pytest_gpu.log" ;;
  start)
    shift; name=${1:?start NAME}; shift
    begin "$name"
    setsid nohup bash gpu/session.sh _run "$name" "$@" > "out/$name/session.log" 2>&1 < /dev/null &
    echo "started $name: $*"; sleep 5; exec bash "$SRC/gpu/session.sh" poll "${POLL:-530}" ;;
  bench)
    shift; name=${1:?bench NAME SCRIPT}; script=${2:?bench NAME SCRIPT}; shift 2
    begin "$name"
    setsid nohup bash -c "python3 -m evalgate compose preset=gpu && python3 -m dvc repro fixture workload \
      && python3 bench/$script $* --out out/$name/bench.json; echo \$? > out/$name/rc; rm -f out/running" \
      > "out/$name/verdict.log" 2>&1 < /dev/null &
    echo "started $name: bench/$script $*"; sleep 5; exec bash "$SRC/gpu/session.sh" poll "${POLL:-530}" ;;
  pair)
    shift; name=${1:?pair NAME}; shift
    begin "$name"
    setsid nohup bash gpu/session.sh _pair "$name" "$@" > "out/$name/session.log" 2>&1 < /dev/null &
    echo "started pair $name: $*"; sleep 5; exec bash "$SRC/gpu/session.sh" poll "${POLL:-530}" ;;
  _pair)  # (not called by hand) one fixture and one set of quantized checkpoints for both (the first pair, 2026-11-27,
          # made its checkpoints twice, once per copy); a serial run that trained its own would judge another model
    shift; name=$1; shift; cd "$WK" || exit 1
    { python3 -m evalgate compose preset=gpu "$@" && CUDA_VISIBLE_DEVICES=0 python3 -m dvc repro workload quantize; } \
      > "out/$name/inputs.log" 2>&1 || { echo 1 > "out/$name/rc"; rm -f out/running; exit 1; }
    rm -rf "$WK-serial" && mkdir -p "$WK-serial/out/$name-serial"
    tar --exclude=./out -cf - . | tar -xf - -C "$WK-serial"
    (cd "$WK-serial" && CUDA_VISIBLE_DEVICES=1 WK="$WK-serial" bash gpu/session.sh _run "$name-serial" --serial "$@") &
    for i in $(seq 1 "${RUNS:-2}"); do
      [ "$i" -gt 1 ] && bash gpu/session.sh fresh
      mkdir -p "out/$name-sched$i"; CUDA_VISIBLE_DEVICES=0 bash gpu/session.sh _run "$name-sched$i" "$@"
    done
    wait; echo 0 > "out/$name/rc"; rm -f out/running ;;
  _run)   # the experiment itself, in its own session (not called by hand)
    shift; name=$1; shift; cd "$WK" || exit 1
    serial=""; [ "${1:-}" = "--serial" ] && { serial=--serial; shift; }
    start=$(date +%s)
    python3 bench/gpu_verdict.py $serial --out "out/$name/verdict.json" "$@" > "out/$name/verdict.log" 2>&1; rc=$?
    python3 gpu/collect.py --seconds $(( $(date +%s) - start )) --command "bash gpu/session.sh start $name $serial $*" \
      > "out/$name/collect.log" 2>&1
    d=$(ls -dt docs/results/*/ | head -1); tar czf "out/$name/results.tgz" "$d" 2>/dev/null
    echo "verdict exit $rc; collected $d" >> "out/$name/verdict.log"
    echo "$rc" > "out/$name/rc"; [ "$(cat out/running 2>/dev/null)" = "$name" ] && rm -f out/running ;;
  fresh)  # forget the variants' results and DVC's run-cache: the next experiment re-runs every variant
    # DVC's cache stays (without it DVC finds the fixture "not in cache", i.e. changed, and trains it again:
    # seen 2026-11-26); its run-cache is bypassed instead: bench/gpu_verdict.py runs `evalgate repro --no-run-cache`
    cd "$WK" && rm -rf results/* && echo "variants forgotten (fixture, workload, checkpoints kept)" ;;
  poll)
    cd "$WK" || exit 1
    deadline=$(( $(date +%s) + ${2:-540} ))
    name=$(cat out/running 2>/dev/null || ls -t out | grep -v running | head -1)
    while [ -f out/running ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 10; done
    for f in verdict.log verdict.json times.log bench.json collect.log session.log gpu.txt; do
      [ -f "out/$name/$f" ] && cp "out/$name/$f" "$OUT/$name-$f"; done
    [ -f "out/$name/results.tgz" ] && cp "out/$name/results.tgz" "$OUT/$name.tgz"
    [ -d "$WK-serial/out/$name-serial" ] && tar czf "$OUT/$name-all.tgz" -C / "${WK#/}/out" "${WK#/}-serial/out" 2>/dev/null
    ls "$WK"/out/*/rc "$WK-serial"/out/*/rc 2>/dev/null | while read -r f; do echo "$f: $(cat "$f")"; done
    if [ -f out/running ]; then echo "still running: $name"; else echo "finished: $name rc=$(cat "out/$name/rc" 2>/dev/null)"; fi
    tail -25 "out/$name/verdict.log" 2>/dev/null
    for f in out/"$name"-*/verdict.log "$WK-serial/out/$name-serial/verdict.log"; do
      [ -f "$f" ] && { echo "== $f"; grep "^repro:" "$f" | tail -3; }; done ;;
  *) echo "usage: gpu/session.sh check | start NAME [--serial] [overrides…] | bench NAME SCRIPT [args…] | pair NAME [overrides…] | poll [SECONDS] | fresh"; exit 2 ;;
esac
