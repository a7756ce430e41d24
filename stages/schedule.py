"""`dvc repro`, scheduled: the stale `baseline` and `run@<variant>` stages run side by side on one
accelerator (evalgate.schedule), then DVC records each and runs the rest.

  1. dvc repro fixture workload quantize     the inputs, by DVC as usual
  2. dvc status baseline run                 which variants DVC would run (all, if the baseline is stale)
  3. the scheduler runs exactly those        the same phases and files as `run@<variant>` (evalgate.runner)
  4. dvc commit -f <each finished stage>     DVC records them as it would after running their command
  5. dvc repro                               gate, report (and anything step 3 left undone)

DVC 3 runs one stage at a time, so this step sits beside it instead of inside it. DVC still decides
what is stale (an unchanged variant never runs, a new one runs alone), caches each variant's folder on
its own, and keeps a failed variant's status.json as that variant's result. Plain `dvc repro` stays the
serial path: the same results, one server at a time. Usage:

  python -m stages.schedule              (make repro; bash gpu/pipeline.sh)
  python -m stages.schedule --serial     one variant at a time, through the same code
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from evalgate import config
from evalgate.cli import stage_main

PATHS = dict(workload="data/workload.jsonl", reference="data/reference.jsonl", results="results",
             checkpoints="checkpoints", gguf="gguf")


def dvc(*args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess:
    """DVC through this interpreter, and stages' `python` resolved to it too (a venv not on PATH)."""
    env = dict(os.environ)
    here = Path(sys.executable).parent
    if (here / "python").exists():
        env["PATH"] = f"{here}{os.pathsep}{env.get('PATH', '')}"
    p = subprocess.run([sys.executable, "-m", "dvc", *args], env=env, text=True,
                       capture_output=capture)
    if check and p.returncode:
        raise SystemExit(f"dvc {' '.join(args)} failed with exit code {p.returncode}"
                         + (f": {(p.stderr or '').strip().splitlines()[-1:]}" if capture else ""))
    return p


def stale(names: list[str]) -> list[str]:
    """The stages among `names` that `dvc status` reports as changed, in the given order."""
    p = dvc("status", "--json", *names, capture=True)
    changed = {k.split(":")[-1] for k in json.loads(p.stdout or "{}")}
    if "baseline" in changed:   # every run@ reads the baseline's results: all of them will be stale
        return list(names)
    return [n for n in names if n in changed]


def _interrupt(*_):
    """SIGTERM (gpu/pipeline.sh --finish, a CI timeout) unwinds like Ctrl-C: every server is stopped."""
    raise KeyboardInterrupt


@stage_main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--serial", action="store_true", help="one variant at a time (the reference timing)")
    a = ap.parse_args(argv)
    cfg = config.load(a.params)
    import signal

    signal.signal(signal.SIGTERM, _interrupt)
    from evalgate import runner, schedule
    from evalgate.engines import get_engine

    engine = get_engine(cfg.engine["name"], cfg.engine)
    engine.preflight()
    t0 = time.time()
    print("schedule: 1/5 inputs (dvc repro fixture workload gguf quantize)", flush=True)
    dvc("repro", "fixture", "workload", "gguf", "quantize")
    stages = ["baseline", *[f"run@{n}" for n in cfg.variants if n != "baseline"]]
    todo = stale(stages)
    print(f"schedule: 2/5 stale: {', '.join(todo) or 'none'}", flush=True)
    results = Path(PATHS["results"])
    slots = []
    for st in todo:
        name = st.removeprefix("run@")
        job = runner.prepare(cfg, name, results / name, Path(PATHS["workload"]), Path(PATHS["reference"]),
                             str(Path(PATHS["checkpoints"]) / name) if name != "baseline" else None,
                             results / "baseline", engine, PATHS["gguf"])
        if job is not None:
            slots.append(schedule.Slot(job))
    print(f"schedule: 3/5 running {len(slots)} variant(s)"
          f"{' one at a time' if a.serial or not engine.attachable else ' side by side'}", flush=True)
    if slots:
        if a.serial or not engine.attachable:
            for s in slots:
                runner.run_serial(s.job, engine)
        else:
            run_scheduled(cfg, engine, slots)
    if todo:
        print(f"schedule: 4/5 dvc commit {' '.join(todo)}", flush=True)
        dvc("commit", "-f", *todo)
    print("schedule: 5/5 dvc repro (gate, report)", flush=True)
    dvc("repro")
    print(f"schedule: done in {time.time() - t0:.1f} s", flush=True)
    return 0


def run_scheduled(cfg, engine, slots) -> dict:
    from evalgate import runner, schedule

    mem = engine.device_memory() if hasattr(engine, "device_memory") else None
    capacity = total = None
    if mem:
        free, total = mem
        capacity = int(free * float(cfg.engine.get("schedule_memory_fraction", 0.9)))
        needs = {s.name: engine.memory_need(s.job.model, s.job.variant) for s in slots}
        shares = schedule.memory_shares(needs, total)
        for s in slots:
            s.need = needs[s.name]
            s.need["share"] = shares[s.name]
        waves = schedule.plan_memory(needs, capacity)
        print(f"schedule: {len(slots)} servers in {len(waves)} wave(s) on {capacity / 2**30:.0f} GiB: "
              + " | ".join(", ".join(w) for w in waves), flush=True)
    worker = [sys.executable, "-m", "stages.run", "--params", "params.yaml", "--workload", PATHS["workload"],
              "--reference", PATHS["reference"]]

    def finish(s, final):
        runner.finish(s.job, {k: v for k, v in s.times.items() if k in ("start_s", "profile_s")})
        schedule.write_timeline(s.job.out, s)

    def fail(s, phase, error):
        runner.fail(s.job.out, phase, error)
        schedule.write_timeline(s.job.out, s)

    util: list = []
    stop = threading.Event()
    schedule.gpu_utilization_sampler(stop, util)
    sch = schedule.Scheduler(
        slots, capacity,
        start=lambda s: engine.start(s.job.model, s.job.variant, s.job.out, s.need.get("share")),
        quality=schedule.quality_worker(worker, float(cfg.engine.get("quality_timeout_s", 1800))),
        profile=lambda s, ep, repeat: runner.profile(s.job, ep, repeat=repeat),
        finish=finish, fail=fail, aa=bool(cfg.load.get("aa")))
    out = sch.run()
    stop.set()
    out["gpu_utilization"] = util
    base = next((s for s in slots if s.name == "baseline"), slots[0])
    (base.job.out / "schedule.json").write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    raise SystemExit(main())
