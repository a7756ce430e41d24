"""Two revisions of the CPU default, fresh, in turns: `evalgate repro` in a fresh clone of each, A B, B A, …

Why: this 2-core VM's speed drifts within a session (the same target's training took 124 s at 07:50 and
183 s at 08:55, 2026-11-27, docs/results/cpu-2026-11-27-4), so a before/after pair run an hour apart
measures the VM. Runs in turns, and the part of the run a change owns, compared per pair, stand that
drift better: each run's wall time is split at `evalgate repro`'s own step marks into the inputs (up to
`2/5`, mostly the fixture's training), the variants (`2/5` to `4/5`) and the rest. It also checks that
both revisions give the same verdicts and the same quality figures (every `lmeval/*` and `fidelity/*`
metric of every variant), which a change to scheduling must not move.

A revision from before `evalgate repro` (2026-11-22's 08824e3, whose fresh 266.4 s is issue 11's CPU
reference) runs as it ran then, `dvc repro`, in the same clone and environment: its wall time and verdicts
count; it has no step marks to split, and its quality figures are its own fixture's, so they are compared
only between that revision's runs.

usage: python bench/repro_ab.py REV_A [REV_B (default HEAD)] [--rounds N] [--keep DIR] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, fresh_clone  # bench/common.py (these scripts run as `python bench/X.py`)

SPANS = ("inputs_s", "variants_s", "after_s", "repro_s")
MARK = re.compile(r"^repro: (\d)/5 .*\[\+([\d.]+) s\]$")


def spans(log: str) -> dict[str, float]:
    """Seconds of the inputs (start → the `2/5` mark), the variants (`2/5` → the first `4/5` mark) and
    what follows (→ `done in`), from `evalgate repro`'s output."""
    first: dict[str, float] = {}
    for line in log.splitlines():
        if m := MARK.match(line.strip()):
            first.setdefault(m.group(1), float(m.group(2)))
    done = re.search(r"^repro: done in ([\d.]+) s", log, re.M)
    if not (done and "2" in first and "4" in first):
        raise SystemExit("the repro log has no 2/5, 4/5 or `done` mark: did the run fail?")
    total = float(done.group(1))
    return {"inputs_s": first["2"], "variants_s": round(first["4"] - first["2"], 1),
            "after_s": round(total - first["4"], 1), "repro_s": total}


def quality(work: Path) -> dict[str, dict[str, float]]:
    out = {}
    for m in sorted((work / "results").glob("*/metrics.json")):
        d = json.loads(m.read_text())
        out[m.parent.name] = {k: v for k, v in d.items()
                              if k.startswith(("lmeval/", "fidelity/")) and "stderr" not in k}
    return out


def one(rev: str, keep: str | None, commit: str | None = None) -> dict:
    work, env = fresh_clone(keep, "evalgate-ab-", commit or rev)
    try:
        marks = (work / "evalgate/repro.py").exists()   # else a revision from before `evalgate repro`
        cmd = [sys.executable, "-m", "evalgate", "repro"] if marks else ["dvc", "repro"]
        t = time.perf_counter()
        p = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if p.returncode:
            sys.stderr.write(p.stdout[-3000:] + p.stderr[-3000:])
            raise SystemExit(f"{rev}: {' '.join(cmd[-2:])} failed with exit code {p.returncode}")
        gate = json.loads((work / "reports/gate.json").read_text())
        fixture = json.loads((work / "fixtures/metrics.json").read_text())
        return {"rev": rev, "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=work, text=True,
                                                     capture_output=True).stdout.strip(),
                "fresh_s": round(wall, 1), **(spans(p.stdout) if marks else dict.fromkeys(SPANS)),
                "train_s": fixture.get("train_seconds_target"), "marks": marks,
                "verdicts": {n: v["verdict"] for n, v in gate["variants"].items()}, "best": gate["best"],
                "quality": quality(work)}
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def pin(rev: str) -> str:
    """The commit `rev` names in this repository now."""
    p = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"repro_ab: {rev!r} is not a commit here")
    return p.stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="revision A (e.g. the commit before a change)")
    ap.add_argument("b", nargs="?", default="HEAD", help="revision B (default HEAD)")
    ap.add_argument("--rounds", type=int, default=1, help="pairs, in turns: A B, then B A, …")
    ap.add_argument("--keep", help="clone into DIR/<n> and keep the clones")
    ap.add_argument("--json", help="also write the runs and the summary here")
    a = ap.parse_args()
    # each revision as it is now: a commit made while the bench runs (half an hour and more) must not turn
    # later runs of "HEAD" into another revision (seen 2026-11-28, docs/results/cpu-2026-11-28)
    pinned = {rev: pin(rev) for rev in (a.a, a.b)}
    runs = []
    for r in range(a.rounds):
        for rev in (a.a, a.b) if r % 2 == 0 else (a.b, a.a):
            keep = f"{a.keep}/{len(runs)}" if a.keep else None
            runs.append(one(rev, keep, pinned[rev]))
            x = runs[-1]
            print(f"{x['rev']} ({x['commit']}): fresh {x['fresh_s']} s = inputs {x['inputs_s']} (training "
                  f"{x['train_s']}) + variants {x['variants_s']} + after {x['after_s']}", flush=True)
    side = {rev: [x for x in runs if x["rev"] == rev] for rev in (a.a, a.b)}
    summary = {rev: {k: statistics.median(v) if (v := [x[k] for x in xs if x[k] is not None]) else None
                     for k in ("fresh_s", "inputs_s", "train_s", "variants_s")} for rev, xs in side.items()}
    ref = runs[0]
    summary["same_verdicts"] = all(x["verdicts"] == ref["verdicts"] and x["best"] == ref["best"] for x in runs)
    summary["same_quality"] = all(x["quality"] == ref["quality"] for x in runs)
    summary["same_quality_per_rev"] = all(x["quality"] == xs[0]["quality"] for xs in side.values() for x in xs)
    # each round is one run of each revision, in either order
    by_rev = [{x["rev"]: x for x in runs[i:i + 2]} for i in range(0, len(runs), 2)]
    summary["fresh_b_over_a_per_pair"] = [round(r[a.b]["fresh_s"] / r[a.a]["fresh_s"], 3) for r in by_rev]
    if all(x["marks"] for x in runs):
        summary["variants_b_over_a_per_pair"] = [round(r[a.b]["variants_s"] / r[a.a]["variants_s"], 3) for r in by_rev]
    print(json.dumps(summary, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps({"runs": [{k: v for k, v in x.items() if k != "quality"} for x in runs],
                                            "summary": summary}, indent=1) + "\n")
    # a revision from before `evalgate repro` trains another fixture: its quality is checked against itself
    same = summary["same_quality"] if all(x["marks"] for x in runs) else summary["same_quality_per_rev"]
    return 0 if summary["same_verdicts"] and same else 1


if __name__ == "__main__":
    raise SystemExit(main())
