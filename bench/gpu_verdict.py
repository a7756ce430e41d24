"""Time to verdict on one GPU, and where it goes: the GPU preset run end to end, then the per-phase
breakdown per variant (server start split into imports, weights, compile, CUDA graphs, API; quality
split into fidelity and evaluation; profile per load level), the GPU's idle share while the schedule
ran (outside the load sweeps, during which nothing of ours polls the driver: evalgate.profile.SWEEPING),
and the pipeline's own overhead (DVC, MLflow, gate, report).

    python bench/gpu_verdict.py [--serial] [hydra overrides…]   run it (`evalgate repro`, inputs included), print
    python bench/gpu_verdict.py --table                          only print the table for results/ as they are

Run on the GPU host with the bundle on PYTHONPATH (gpu/pipeline.sh sets it; so does this script's
caller there). Targets (issue 11): ≤ 5 min to verdict once the fixture exists, ≤ 8 min with it,
overhead ≤ 5 % of the wall time. The inputs (fixture, workload, gguf, quantize) are built by the same
`evalgate repro` a user runs, so what it does beside them (the engine's warm-up) counts as it would; their
span (from its `1/5 inputs` mark to its `2/5` mark) is `fixture_and_inputs_s`, and the rest of its wall time
is the time to verdict.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run as a script from the repository root
from evalgate.results import VariantResults  # noqa: E402

START_PHASES = ("imports_s", "weights_s", "compile_s", "cuda_graphs_s", "api_ready_s")


def breakdown(results: Path, wall_s: float | None = None) -> dict:
    """Per variant: its phases (s); over the run: the schedule's span, GPU idle share, the rest."""
    rows, spans = {}, []
    for d in sorted(p for p in results.iterdir() if p.is_dir()):
        store = VariantResults(d)
        m, tl, prof = store.metrics(), store.timeline() or {}, store.profile() or {}
        row = {"start_s": m.get("time/start_s"), **{f"start/{k}": m.get(f"time/start/{k}") for k in START_PHASES},
               "fidelity_s": m.get("time/fidelity_s"), "eval_s": m.get("time/eval_s"), "profile_s": m.get("time/profile_s")}
        for lv in prof.get("levels", []):
            row[f"profile/{lv['name']}_s"] = lv["summary"].get("duration")
        rows[d.name] = {k: (round(v, 1) if isinstance(v, (int, float)) else v) for k, v in row.items() if v is not None}
        spans += [(e["start"], e["end"]) for e in tl.get("events", [])]
    out: dict = {"phases_s": rows}
    sched = VariantResults(results / "baseline").read("schedule.json") or {}
    if sched:
        span = sched["end"] - sched["start"]
        util = sched.get("gpu_utilization", [])
        out["schedule_s"] = round(span, 1)
        if util:
            out["gpu_idle_share"] = round(sum(u < 5 for _, u in util) / len(util), 3)
            out["gpu_util_mean_pct"] = round(sum(u for _, u in util) / len(util), 1)
    elif spans:
        out["schedule_s"] = round(max(e for _, e in spans) - min(s for s, _ in spans), 1)
    totals: dict[str, float] = {}
    for r in rows.values():
        for k in ("start_s", "fidelity_s", "eval_s", "profile_s"):
            totals[k] = totals.get(k, 0.0) + (r.get(k) or 0.0)
    out["phase_totals_s"] = {k: round(v, 1) for k, v in totals.items()}
    out["serial_sum_s"] = round(sum(totals.values()), 1)   # what one-after-another would cost, at these phase times
    if wall_s is not None and "schedule_s" in out:
        out["outside_schedule_s"] = round(wall_s - out["schedule_s"], 1)
    return out


STEP = re.compile(r"^repro: (.+?) \[\+([\d.]+) s\]$")
DONE = re.compile(r"^repro: done in ([\d.]+) s$")
UP = re.compile(r"^repro: 0/5 up \(this process started ([\d.]+) s ago\)$")


def repro_steps(lines: list[str], wall_s: float | None = None) -> list[dict]:
    """`evalgate repro`'s own step marks (`repro: <step> [+t s]`, then `repro: done in T s`) → each step
    with the seconds until the next mark: where the time outside the scheduler goes, without reading logs.
    With the process's wall time (`wall_s`) and its `0/5 up` line: its start and its exit too."""
    marks = [(m.group(1), float(m.group(2))) for line in lines if (m := STEP.match(line.rstrip()))]
    if not marks:
        return []
    done = next((float(m.group(1)) for line in lines if (m := DONE.match(line.rstrip()))), marks[-1][1])
    up = next((float(m.group(1)) for line in lines if (m := UP.match(line.rstrip()))), None)
    ends = [t for _, t in marks[1:]] + [done]
    out = [{"step": "until the first mark (dvc status)", "at_s": 0.0, "seconds": marks[0][1]}] + [
        {"step": step, "at_s": t, "seconds": round(end - t, 1)} for (step, t), end in zip(marks, ends)]
    if up is not None:
        out.insert(0, {"step": "before the marks (interpreter start, config, preflight)", "at_s": -up, "seconds": up})
        if wall_s is not None:
            out.append({"step": "after `done` (interpreter exit)", "at_s": done, "seconds": round(wall_s - up - done, 1)})
    return out


AHEAD = re.compile(r"^repro: started (.+) ahead, beside the inputs \(at \+([\d.]+) s\)$")


def started_ahead(lines: list[str]) -> dict | None:
    """The servers `evalgate repro` started before its inputs were done (evalgate.repro.Early): which, and
    when. In such a run part of the schedule lies inside the inputs' span, so its `time_to_verdict_s`
    (wall time less that span) is not the time to verdict of a run whose fixture existed: compare
    `with_fixture_s`."""
    m = next((m for line in lines if (m := AHEAD.match(line.rstrip()))), None)
    return None if m is None else {"variants": m.group(1).split(", "), "at_s": float(m.group(2))}


def inputs_span(seen: list[tuple[float, str]]) -> float:
    """Seconds from `evalgate repro`'s `1/5 inputs (…)` line to its `2/5` line (0 when the
    inputs were up to date): the fixture and the other inputs, as the run built them."""
    start = next((t for t, line in seen if line.startswith("repro: 1/5 inputs (")), None)
    end = next((t for t, line in seen if line.startswith("repro: 2/5 ")), None)
    return 0.0 if start is None or end is None else end - start


def print_table(b: dict) -> None:
    cols = sorted({k for r in b["phases_s"].values() for k in r}, key=lambda k: (k.split("/")[0], k))
    print("| variant | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for n, r in b["phases_s"].items():
        print(f"| {n} | " + " | ".join(str(r.get(c, "–")) for c in cols) + " |")
    print(json.dumps({k: v for k, v in b.items() if k != "phases_s"}, indent=1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serial", action="store_true")
    ap.add_argument("--table", action="store_true", help="only print the breakdown of results/ as they are")
    ap.add_argument("--out", default=None, help="write the numbers as JSON here too")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    if a.table:
        print_table(breakdown(Path("results")))
        return 0
    py = [sys.executable]
    subprocess.run([*py, "-m", "evalgate", "compose", "preset=gpu", *a.overrides], check=True)
    t0 = time.time()
    # --no-run-cache: a variant timed again (gpu/session.sh fresh) must run, not come back from DVC's run-cache
    seen = []
    # EVALGATE_EXIT_TRACE: evalgate.cli says what its exit waits for (the "after `done`" step)
    with subprocess.Popen([*py, "-m", "evalgate", "repro", "--no-run-cache", *(["--serial"] if a.serial else [])],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1,
                          env={**os.environ, "EVALGATE_EXIT_TRACE": "1"}) as p:
        exited: list[float] = []   # when the process ended, apart from when its output closed (a child may hold it)
        threading.Thread(target=lambda: (p.wait(), exited.append(time.time())), daemon=True).start()
        for line in p.stdout:   # shown as it comes, and kept (with when it came) for the step marks
            sys.stdout.write(line)
            seen.append((time.time(), line))
        eof = time.time()
    if p.returncode:
        raise SystemExit(f"evalgate repro exited with {p.returncode}")
    wall_s = time.time() - t0
    fixture_s = inputs_span(seen)
    verdict_s = wall_s - fixture_s
    b = breakdown(Path("results"), verdict_s)
    lines = [line for _, line in seen]
    b["repro_steps"] = repro_steps(lines, wall_s)
    if ahead := started_ahead(lines):
        b["started_ahead"] = ahead
    done_at = next((t for t, line in seen if DONE.match(line.rstrip())), None)
    if done_at is not None and exited:   # the "after `done`" step: the process's own exit, then its output's close
        b["exit_split_s"] = {"process_exit": round(exited[0] - done_at, 2), "output_closed_after": round(eof - exited[0], 2)}
    b.update(fixture_and_inputs_s=round(fixture_s, 1), time_to_verdict_s=round(verdict_s, 1),
             with_fixture_s=round(fixture_s + verdict_s, 1), mode="serial" if a.serial else "scheduled")
    if "schedule_s" in b:
        b["overhead_share"] = round(1 - b["schedule_s"] / verdict_s, 3)
    print_table(b)
    if a.out:
        Path(a.out).write_text(json.dumps(b, indent=1))
        # every line with the seconds since the start: where the time between two step marks goes (the
        # fixture stage's own output, DVC's lock update and the gguf stage carry no marks of their own)
        Path(a.out).with_name("times.log").write_text("".join(f"{t - t0:8.1f}  {line}" for t, line in seen))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
