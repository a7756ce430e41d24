"""Wall time of a fresh CPU `make repro` (the scheduled `dvc repro`: `evalgate repro`), of a
no-op re-run, and peak memory (targets on 2 cores: fresh ≤ 5 min, no-op ≤ 15 s, peak RSS ≤ 1 GB).

Runs in a fresh `git clone` of this repository (the committed state, nothing cached), with this
interpreter's environment. Peak memory is the largest max-RSS of any process the run started
(getrusage RUSAGE_CHILDREN, which covers every waited-for descendant).

usage: python bench/repro_time.py [--keep DIR] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"fresh_s": 300, "noop_s": 15}


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", help="clone here and keep it (default: a temp folder, removed)")
    ap.add_argument("--json", help="also write the numbers here")
    a = ap.parse_args()
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="evalgate-bench-"))
    if work.exists() and any(work.iterdir()):
        shutil.rmtree(work)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(work)], check=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    try:
        fresh = timed([sys.executable, "-m", "evalgate", "repro"], work, env)
        noop = timed([sys.executable, "-m", "evalgate", "repro"], work, env)
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        fixture = json.loads((work / "fixtures/metrics.json").read_text())
        gate = json.loads((work / "reports/gate.json").read_text())
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    out = {"fresh_s": round(fresh, 1), "noop_s": round(noop, 1), "peak_rss_mb": round(peak_mb),
           "target_add_exact_match": fixture.get("target_add_exact_match"), "best_variant": gate["best"],
           "verdicts": {n: v["verdict"] for n, v in gate["variants"].items()},
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
           "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(out, indent=1))
    for k, limit in TARGETS.items():
        print(f"{k}: {out[k]} s (target ≤ {limit} s): {'ok' if out[k] <= limit else 'OVER'}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
