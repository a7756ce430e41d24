"""How fast each of this host's CPUs runs Python, CPU by CPU, with its SMT siblings: does a thread's speed
depend on which CPU it lands on (some slower all along: a busy sibling, another tenant), or on when (all
alike, drifting)? The first makes pinning the profiled server worth it (bench/neighbours.py --pin).

    python bench/cpu_map.py [--seconds 15] [--out F.json]

Round-robin over the CPUs this process may use: pinned to one at a time, evalgate.profile.cpu_probe_us
(the fastest of 5 timings of a fixed ≈ 1 ms loop), until `--seconds` have gone. Per CPU: its siblings,
the fastest, median and slowest probe. Hand-written: no tool reports per-core Python speed over time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    from evalgate.profile import cpu_probe_us

    mine = os.sched_getaffinity(0)
    cpus = sorted(mine)
    probes: dict[int, list[float]] = {c: [] for c in cpus}
    end = time.time() + a.seconds
    try:
        while time.time() < end:
            for c in cpus:
                os.sched_setaffinity(0, [c])
                probes[c].append(cpu_probe_us())
    finally:
        os.sched_setaffinity(0, mine)
    out = {}
    for c in cpus:
        sib = Path(f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list")
        v = probes[c]
        out[c] = {"siblings": sib.read_text().strip() if sib.exists() else None, "n": len(v),
                  "min_us": round(min(v), 1), "median_us": round(statistics.median(v), 1), "max_us": round(max(v), 1)}
        print(f"cpu {c:3d}  siblings {out[c]['siblings']}  n {len(v)}  min {out[c]['min_us']:7.1f}  "
              f"median {out[c]['median_us']:7.1f}  max {out[c]['max_us']:7.1f} µs", flush=True)
    if a.out:
        a.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
