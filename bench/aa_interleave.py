"""Does interleaving the rounds of two servers' load levels shrink the A/A difference? (issue 10 item 5)

Today a variant's whole sweep runs, then the next variant's, and the baseline's A/A sweep comes last, minutes
after its first. On an H100 (2026-11-27, `bench/aa_noise.py`) the spread inside one level was ±5-11 % (95 %),
its rounds ≈ 2-4 % apart, but two sweeps of one server 20 s apart differed by 5-23 % at c1: the host's speed
moves on a scale of seconds to minutes, and whatever moves between two sweeps lands in the comparison.

Here two servers of the baseline (A and B: an A/A pair across servers, as a variant's comparison is)
run the same levels (`load.concurrency` of params.yaml, the same request slices) in two designs,
repeated `--reps` times, the designs' order alternating:
  blocked      R rounds on one server, then R rounds on the other (what a sweep per variant does)
  interleaved  round r on A then on B, the order alternating (AB BA AB …), so both meet the same host
Per level and design: each repetition's A/A % (B against A) of output throughput and median TPOT.
Rounds are fixed (`--rounds`, each `load.waves` waves of the level's concurrency): the adaptive stop
would let the two designs differ in requests, not just in order.

    python bench/aa_interleave.py [--reps 6] [--rounds 3] [--neighbours 0] [--out F.json]

Run in the pipeline's working copy on the GPU host once the fixture and workload exist (gpu/session.sh's
copy: params.yaml, fixtures/model, data/workload.jsonl). Hand-written: no serving benchmark interleaves
two servers' levels.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run as a script from the repository root

METRICS = ("output_throughput", "median_tpot_ms", "median_ttft_ms")


def aa_pct(a: dict, b: dict) -> dict:
    return {m: round(100 * (b[m] - a[m]) / a[m], 2) for m in METRICS if a.get(m) and b.get(m) is not None}


def describe(values: list[float]) -> dict:
    """What the A/A of one run would be, over the repetitions: mean |A/A|, the largest, and the share
    within ±3 % (issue 10's goal)."""
    if not values:
        return {}
    return {"mean_abs": round(statistics.fmean(abs(v) for v in values), 2), "max_abs": round(max(abs(v) for v in values), 2),
            "within_3pct": round(sum(abs(v) <= 3 for v in values) / len(values), 2), "n": len(values)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--reps", type=int, default=6, help="repetitions of both designs")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per server per level")
    ap.add_argument("--neighbours", type=int, default=0, help="idle servers of the same model beside A and B")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)

    from common import baseline_servers  # bench/common.py (these scripts run as `python bench/X.py`)

    from evalgate.profile import SWEEPING, level_warmup, summarize

    n_servers = 2 + a.neighbours
    t0, rows = time.time(), []
    # nothing of ours polls the driver during the levels, as in a scheduled run
    with baseline_servers(a.params, n_servers, n_servers, "aa-interleave-") as (cfg, _, requests, _, eps):
        print(f"aa_interleave: {n_servers} server(s) up in {time.time() - t0:.1f} s", flush=True)
        ignore_eos = bool(cfg.workload.get("ignore_eos", False))
        load_cfg, slo = cfg.load, cfg.slo
        A, B = eps[0], eps[1]
        SWEEPING.set()
        try:
            lo = int(load_cfg.get("requests", {}).get("min", 16))
            hi = min(int(load_cfg.get("requests", {}).get("max", 1024)), len(requests))
            ladder = list(load_cfg.get("concurrency", [1]))

            def one_round(ep, c, r, n, warm):
                batch = requests[r * n:(r + 1) * n]
                recs, dur, _ = ep.run_requests(batch, concurrency=c, ignore_eos=ignore_eos, warmup=warm)
                return {"records": recs, "duration": dur, "at_s": round(time.time() - t0, 2)}

            for rep in range(a.reps):
                designs = ("blocked", "interleaved") if rep % 2 == 0 else ("interleaved", "blocked")
                for design in designs:
                    for i, c in enumerate(ladder):
                        n = min(max(lo, int(load_cfg.get("waves", 4)) * c), hi // a.rounds)
                        warm = level_warmup(load_cfg, i, c)
                        got = {"A": [], "B": []}
                        for ep in (A, B):
                            ep.reset_cache()
                        if design == "blocked":
                            order = (("A", A), ("B", B)) if rep % 2 == 0 else (("B", B), ("A", A))
                            for name, ep in order:
                                for r in range(a.rounds):
                                    got[name].append(one_round(ep, c, r, n, warm if r == 0 else 0))
                        else:
                            for r in range(a.rounds):
                                order = (("A", A), ("B", B)) if (r + rep) % 2 == 0 else (("B", B), ("A", A))
                                for name, ep in order:
                                    got[name].append(one_round(ep, c, r, n, warm if r == 0 else 0))
                        summ = {k: summarize([x for rd in v for x in rd["records"]], sum(rd["duration"] for rd in v), slo)
                                for k, v in got.items()}
                        per_round = {k: [round(sum(x["output_tokens"] for x in rd["records"]) / rd["duration"], 1) for rd in v]
                                     for k, v in got.items()}
                        row = {"rep": rep, "design": design, "level": f"c{c}", "aa_pct": aa_pct(summ["A"], summ["B"]),
                               "A": {m: summ["A"].get(m) for m in METRICS}, "B": {m: summ["B"].get(m) for m in METRICS},
                               "round_tok_s": per_round, "round_at_s": {k: [rd["at_s"] for rd in v] for k, v in got.items()}}
                        rows.append(row)
                        print(f"aa_interleave: rep {rep} {design:11s} c{c:<4d} A/A " + "  ".join(
                            f"{m.replace('median_', '')} {v:+.1f} %" for m, v in row["aa_pct"].items()), flush=True)
        finally:
            SWEEPING.clear()
    summary = {}
    for design in ("blocked", "interleaved"):
        for lv in sorted({r["level"] for r in rows}, key=lambda x: int(x[1:])):
            sel = [r for r in rows if r["design"] == design and r["level"] == lv]
            summary[f"{design} {lv}"] = {m: describe([r["aa_pct"][m] for r in sel if m in r["aa_pct"]]) for m in METRICS}
    for k, v in summary.items():
        print(f"{k:18s} " + "  ".join(f"{m.replace('median_', '')}: mean |A/A| {s.get('mean_abs')} %, max {s.get('max_abs')} %, "
                                      f"within ±3 % {s.get('within_3pct')}" for m, s in v.items() if m != "median_ttft_ms"))
    out = {"rows": rows, "summary": summary, "reps": a.reps, "rounds": a.rounds, "neighbours": a.neighbours,
           "load": load_cfg, "seconds": round(time.time() - t0, 1)}
    if a.out:
        a.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
