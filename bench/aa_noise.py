"""The A/A noise of the GPU load sweep, and what a scheduled run's surroundings add to it: the
baseline's server profiled again and again with the run's own sweep (`load` of params.yaml),
alternating conditions, so each condition's effect shows against the spread within that condition.

Conditions, interleaved (ABBA…, `--rounds` sweeps of each):
  quiet    nothing polls the GPU driver while the sweep runs
  polled   what a scheduled run did while it profiled: one NVML process-list sampler per server
           (evalgate.engines.vllm.GpuMemorySampler, every 0.5 s; `--pollers`) and the GPU-utilization
           sampler (evalgate.schedule.gpu_utilization_sampler)
`--neighbours K`: K more servers of the same model stay up, idle, as in a scheduled run; with
`--alone-rounds N` they are then stopped and N more rounds of both conditions run with the server alone.

Why hand-written: the question is what the scheduler's own threads and idle servers do to a sweep, which
no serving benchmark asks. The A/A figure of one run is one sample; this gives the spread.

    python bench/aa_noise.py [--rounds 4] [--pollers 7] [--neighbours 6] [--alone-rounds 2] [--out F.json]

Run in the pipeline's working copy on the GPU host after the fixture and workload exist (gpu/session.sh's
copy: params.yaml, fixtures/model, data/workload.jsonl).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run as a script from the repository root

METRICS = ("output_throughput", "median_tpot_ms", "median_ttft_ms", "median_e2el_per_token_ms")


def spread(values: list[float]) -> dict:
    """Mean, CV % and the mean |difference| % of consecutive values (what one A/A pair would show)."""
    m = statistics.fmean(values)
    cv = 100 * statistics.stdev(values) / m if len(values) > 1 and m else 0.0
    pairs = [100 * abs(a - b) / ((a + b) / 2) for a, b in zip(values, values[1:]) if a + b]
    return {"mean": round(m, 3), "cv_pct": round(cv, 2), "pair_diff_pct": round(statistics.fmean(pairs), 2) if pairs else None,
            "min": round(min(values), 3), "max": round(max(values), 3), "n": len(values)}


class Pollers:
    """What a scheduled run's samplers did before they paused during sweeps: `n` process-list samplers
    (GpuMemorySampler.sample) and one utilization reading, each every 0.5 s, in threads of this process
    (the sweep's client's process, as in the scheduler)."""

    def __init__(self, n: int, pgid: int, period_s: float = 0.5):
        import pynvml

        from evalgate.engines.vllm import GpuMemorySampler
        from evalgate.gpu import visible_device

        handle = visible_device()
        self.halt = threading.Event()
        jobs = [GpuMemorySampler(pgid).sample for _ in range(n)]
        jobs.append(lambda: pynvml.nvmlDeviceGetUtilizationRates(handle))

        def loop(job):
            while not self.halt.is_set():
                job()
                self.halt.wait(period_s)

        self.threads = [threading.Thread(target=loop, args=(j,), daemon=True) for j in jobs]
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self.halt.set()
        for t in self.threads:
            t.join()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--rounds", type=int, default=4, help="sweeps of each condition with the neighbours up")
    ap.add_argument("--pollers", type=int, default=7, help="process-list samplers in the polled condition")
    ap.add_argument("--neighbours", type=int, default=6, help="idle servers of the same model beside it")
    ap.add_argument("--alone-rounds", type=int, default=2, help="sweeps of each condition once the neighbours are stopped")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)

    from common import baseline_servers  # bench/common.py (these scripts run as `python bench/X.py`)

    from evalgate.profile import sweep

    n = 1 + a.neighbours
    t0 = time.time()
    # only the Pollers poll: the servers' own samplers are stopped
    with baseline_servers(a.params, n, 1, "aa-noise-") as (cfg, engine, requests, servers, endpoints):
        print(f"aa_noise: {n} server(s) up in {time.time() - t0:.1f} s", flush=True)
        ep, pgid = endpoints[0], servers[0].proc.pid
        ignore_eos = bool(cfg.workload.get("ignore_eos", False))
        first = sweep(ep, requests, cfg.load, cfg.slo, ignore_eos)   # warm-up, and the rate levels' reference
        peak = first["summary"]["request_throughput"]
        rows = []

        def one(cond: str, neighbours: int) -> None:
            pollers = Pollers(a.pollers, pgid) if cond == "polled" else None
            try:   # every level starts from an empty prefix cache (evalgate.profile.run_level)
                res = sweep(ep, requests, cfg.load, cfg.slo, ignore_eos, base_peak_rps=peak)
            finally:
                if pollers:
                    pollers.stop()
            row = {"condition": cond, "neighbours": neighbours, "at_s": round(time.time() - t0, 1),
                   "levels": {lv["name"]: {k: lv["summary"].get(k) for k in (*METRICS, "completed", "ci_pct")}
                              for lv in res["levels"]}}
            rows.append(row)
            brief = ", ".join(f"{k} {v['output_throughput']:.0f} tok/s tpot {v['median_tpot_ms']:.2f}"
                              for k, v in row["levels"].items())
            print(f"aa_noise: {cond:6s} neighbours {neighbours}: {brief}", flush=True)

        for r in range(a.rounds):
            for cond in (("quiet", "polled") if r % 2 == 0 else ("polled", "quiet")):
                one(cond, a.neighbours)
        if a.alone_rounds:
            for s in servers[1:]:
                s.stop()
            del servers[1:]
            for r in range(a.alone_rounds):
                for cond in (("quiet", "polled") if r % 2 == 0 else ("polled", "quiet")):
                    one(cond, 0)
    summary: dict = {}
    for key in sorted({(r["condition"], r["neighbours"]) for r in rows}):
        sel = [r for r in rows if (r["condition"], r["neighbours"]) == key]
        summary[f"{key[0]}, {key[1]} neighbours"] = {
            lv: {m: spread([r["levels"][lv][m] for r in sel if r["levels"].get(lv, {}).get(m) is not None])
                 for m in METRICS} for lv in sel[0]["levels"]}
    out = {"rows": rows, "summary": summary, "pollers": a.pollers, "neighbours": a.neighbours,
           "load": cfg.load, "seconds": round(time.time() - t0, 1)}
    for cond, levels in summary.items():
        for lv, ms in levels.items():
            print(f"{cond:22s} {lv:6s} " + "  ".join(
                f"{m.replace('median_', '')}: {s['mean']} (cv {s['cv_pct']} %, pair {s['pair_diff_pct']} %)"
                for m, s in ms.items() if m in ("output_throughput", "median_tpot_ms")))
    if a.out:
        a.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
