"""What MLflow's system-metrics monitors do to an asyncio client in the same process.

A scheduled GPU run times its load profiles with `vllm bench serve`'s asyncio loop inside the scheduler's
process, where each variant's MLflow run used to start a SystemMetricsMonitor thread (psutil and NVML
samples, a SQLite write, every 5 s). This probes the event-loop lag (a 1 ms sleep, over and over) with
N such monitors running, the arms interleaved, and prints the lag percentiles and the stalls over 5 ms.
The scheduler now starts one monitor for the host (evalgate.tracking.host_metrics) instead of one per
variant.

    python bench/client_lag.py [--monitors 0 1 7] [--rounds 2] [--seconds 20] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

PROBE = r"""
import asyncio, json, logging, sys, tempfile, time, warnings
warnings.filterwarnings("ignore"); logging.disable(logging.WARNING)
n, secs = int(sys.argv[1]), float(sys.argv[2])
import mlflow
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
uri = f"sqlite:///{tempfile.mkdtemp()}/m.db"
client = mlflow.MlflowClient(uri)
exp = client.create_experiment("lag")
monitors = []
for _ in range(n):
    run = client.create_run(exp)
    m = SystemMetricsMonitor(run.info.run_id, sampling_interval=5, samples_before_logging=1, tracking_uri=uri)
    m.start()
    monitors.append(m)
time.sleep(1)
async def probe():
    lags, end = [], time.perf_counter() + secs
    while time.perf_counter() < end:
        t = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append((time.perf_counter() - t - 0.001) * 1000)
    return lags
lags = sorted(asyncio.run(probe()))
q = lambda p: lags[int(p * (len(lags) - 1))]
print(json.dumps({"monitors": n, "samples": len(lags), "p50_ms": q(0.5), "p99_ms": q(0.99), "p999_ms": q(0.999),
                  "max_ms": lags[-1], "stalls_over_5ms": sum(x > 5 for x in lags)}))
for m in monitors:
    m.finish()
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--monitors", type=int, nargs="+", default=[0, 1, 7])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    rows = []
    for r in range(a.rounds):
        for n in a.monitors:   # interleaved: the machine's drift falls on every arm alike
            p = subprocess.run([sys.executable, "-c", PROBE, str(n), str(a.seconds)], capture_output=True, text=True)
            if p.returncode:
                print(p.stderr[-2000:], file=sys.stderr)
                return p.returncode
            row = {"round": r, **json.loads(p.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(f"round {r} monitors {n}: p50 {row['p50_ms']:.3f} ms, p99 {row['p99_ms']:.2f} ms, p99.9 "
                  f"{row['p999_ms']:.2f} ms, max {row['max_ms']:.1f} ms, {row['stalls_over_5ms']} stalls > 5 ms "
                  f"in {row['samples']} sleeps", flush=True)
    if a.out:
        a.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
