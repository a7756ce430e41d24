"""Wall time of the llama.cpp preset from a fresh clone, the build of llama.cpp's tools included:
`evalgate compose preset=llamacpp && evalgate repro` (target on 2 cores: ≤ 15 min), then a no-op re-run.

Runs in a fresh `git clone` of this repository (the committed state) with this interpreter's environment.
The tools are built into a fresh folder inside the clone ($EVALGATE_LLAMACPP_HOME), so the build is timed
too; `--reuse-build` uses this machine's cached build instead. `--out DIR` copies what a reviewer needs
(report, gate, every variant's metrics, the GGUF records and Modelfiles, the build record, these timings).

usage: python bench/llamacpp_time.py [--reuse-build] [--keep DIR] [--out DIR] [overrides…]
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
import time
from pathlib import Path

from common import fresh_clone  # bench/common.py (these scripts run as `python bench/X.py`)

TARGET_S = 15 * 60


def bench_rounds(work: Path, env: dict, n: int) -> dict:
    """llama-bench on every GGUF of the run (f16 and each quantize@ type), `n` rounds in turn (A B C… A B C…),
    so a slow drift of this shared machine's background load hits every file alike: per file, tg128 and
    pp128 tok/s of each round, and the median over rounds of each file's tg speed relative to F16's."""
    import statistics

    sys.path.insert(0, str(work))
    from evalgate import gguf as g

    tl = g.tools({"build": {"home": env.get("EVALGATE_LLAMACPP_HOME")}} if env.get("EVALGATE_LLAMACPP_HOME") else None,
                 build=False)
    files = {"f16": work / "gguf/model-f16.gguf"}
    for ck in sorted((work / "checkpoints").glob("*/checkpoint.json")):
        info = json.loads(ck.read_text())
        if info.get("format") == "gguf":
            files[info["type"].lower()] = ck.parent / info["file"]
    out = {name: {"tg": [], "pp": []} for name in files}
    for _ in range(n):
        for name, f in files.items():
            p = subprocess.run([tl["llama-bench"], "-m", str(f), "-p", "128", "-n", "128", "-r", "5", "-o", "json"],
                               capture_output=True, text=True)
            for row in json.loads(p.stdout or "[]"):
                out[name]["tg" if row.get("n_gen") else "pp"].append(round(row["avg_ts"], 1))
    for name in files:
        ratios = [a / b for a, b in zip(out[name]["tg"], out["f16"]["tg"])]
        out[name]["tg_speedup_vs_f16_median"] = round(statistics.median(ratios), 3) if ratios else None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reuse-build", action="store_true", help="use this machine's cached llama.cpp build")
    ap.add_argument("--keep", help="clone here and keep it (default: a temp folder, removed)")
    ap.add_argument("--out", help="copy the results here (docs/results/cpu-llamacpp-<date>/)")
    ap.add_argument("--rounds", type=int, default=5, help="llama-bench rounds over every GGUF after the run")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides after preset=llamacpp")
    a = ap.parse_args()
    work, env = fresh_clone(a.keep, "evalgate-llamacpp-")
    if not a.reuse_build:
        env["EVALGATE_LLAMACPP_HOME"] = str(work / ".llamacpp-build")
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "evalgate", "compose", "preset=llamacpp", *a.overrides], cwd=work, env=env,
                   check=True)
    with open(work / "repro.log", "w") as log:
        p = subprocess.run([sys.executable, "-m", "evalgate", "repro"], cwd=work, env=env, stdout=log,
                           stderr=subprocess.STDOUT)
    fresh = time.perf_counter() - t0
    t1 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=work, env=env, check=True, capture_output=True)
    noop = time.perf_counter() - t1
    rounds = bench_rounds(work, env, a.rounds)
    gate = json.loads((work / "reports/gate.json").read_text())
    conv = json.loads((work / "gguf/gguf.json").read_text())
    fixture = json.loads((work / "fixtures/metrics.json").read_text())
    out = {"command": "evalgate compose preset=llamacpp " + " ".join(a.overrides) + " && evalgate repro",
           "repro_exit_code": p.returncode, "fresh_s": round(fresh, 1), "noop_s": round(noop, 1),
           "build_s": None if a.reuse_build else conv["build"].get("build_seconds"),
           "fixture_s": fixture.get("build_seconds"),
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
           "best_variant": gate["best"], "verdicts": {n: v["verdict"] for n, v in gate["variants"].items()},
           "load_average_before": [round(x, 2) for x in load_before],
           "load_average_after": [round(x, 2) for x in os.getloadavg()],
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
           "llama_cpp": conv["build"].get("llama_cpp"), "date": time.strftime("%Y-%m-%d"), "llama_bench_rounds": rounds}
    print(json.dumps(out, indent=1))
    print(f"fresh: {out['fresh_s']} s (target ≤ {TARGET_S} s): {'ok' if fresh <= TARGET_S else 'OVER'}")
    if a.out:
        dest = Path(a.out)
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "bench.json").write_text(json.dumps(out, indent=1) + "\n")
        for f in ("reports/summary.md", "reports/gate.json", "reports/plots/levels.json", "reports/pareto.png",
                  "reports/curves.png", "reports/timeline.png", "fixtures/metrics.json", "gguf/gguf.json", "gguf/Modelfile",
                  "params.yaml", "repro.log"):
            if (work / f).exists():
                target = dest / f.replace("/", "_") if f.count("/") else dest / f
                shutil.copy2(work / f, target)
        if (work / "reports/metrics").is_dir():
            shutil.copytree(work / "reports/metrics", dest / "reports_metrics", dirs_exist_ok=True)
        for d in sorted((work / "checkpoints").iterdir()):
            for f in ("checkpoint.json", "Modelfile"):
                if (d / f).exists():
                    (dest / "checkpoints" / d.name).mkdir(parents=True, exist_ok=True)
                    shutil.copy2(d / f, dest / "checkpoints" / d.name / f)
        for d in sorted((work / "results").iterdir()):
            for f in ("metrics.json", "status.json", "fidelity.log", "llama_bench.log", "server_cmd.json"):
                if (d / f).exists():
                    (dest / "results" / d.name).mkdir(parents=True, exist_ok=True)
                    shutil.copy2(d / f, dest / "results" / d.name / f)
        print(f"copied the results to {dest}")
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
