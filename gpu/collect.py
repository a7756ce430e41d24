"""Gather a finished GPU run into docs/results/<name>/: the report, gate verdicts, per-variant
metrics, server commands and bench results, versions, time to verdict and a per-phase breakdown."""
from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import platform
import shutil
import subprocess
import time
from pathlib import Path

PHASES = ("start_s", "profile_s", "eval_s", "fidelity_s")


def mlflow_runs() -> list[dict]:
    """The runs the report stage logged (parent and nested), as evidence of what MLflow holds."""
    try:
        import mlflow

        runs = mlflow.search_runs(experiment_names=["evalgate"], output_format="list")
    except Exception as e:  # noqa: BLE001 - the results matter more than this listing
        return [{"error": str(e)}]
    return [{"run_id": r.info.run_id, "name": r.info.run_name, "parent": r.data.tags.get("mlflow.parentRunId"),
             "verdict": r.data.tags.get("verdict")} for r in runs]


def _new_dir(base: str) -> Path:
    """A folder that does not exist yet: a second run on the same day must not overwrite the first."""
    out, n = Path(base), 2
    while out.exists():
        out, n = Path(f"{base}-{n}"), n + 1
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, required=True, help="wall time of the whole run")
    ap.add_argument("--command", required=True)
    ap.add_argument("--note", default="")
    ap.add_argument("--out", default=None, help="default: docs/results/h200-<date>[-N], a new folder per run")
    a = ap.parse_args()
    out = Path(a.out) if a.out else _new_dir(f"docs/results/h200-{time.strftime('%Y-%m-%d')}")
    out.mkdir(parents=True, exist_ok=True)
    for f in ("reports/summary.md", "reports/gate.json", "reports/pareto.png", "reports/metrics.json",
              "fixtures/metrics.json", "params.yaml", "dvc.lock"):
        if Path(f).exists():
            shutil.copy(f, out / f.replace("/", "_").removeprefix("reports_"))
    phases = {}
    for d in sorted(p for p in Path("results").iterdir() if p.is_dir()):
        dst = out / "variants" / d.name
        dst.mkdir(parents=True, exist_ok=True)
        for f in ("status.json", "metrics.json", "server_cmd.json", "lm_eval.json", "error.log", *[
                p.name for p in d.glob("bench_c*.json")]):
            if (d / f).exists():
                shutil.copy(d / f, dst / f)
        if (d / "server.log").exists():  # the head holds the start-up facts, the tail any error
            lines = (d / "server.log").read_text(errors="replace").splitlines()
            keep = lines if len(lines) <= 600 else [*lines[:300], f"[… {len(lines) - 600} lines left out …]", *lines[-300:]]
            (dst / "server.log").write_text("\n".join(keep) + "\n")
        m = json.loads((d / "metrics.json").read_text()) if (d / "metrics.json").exists() else {}
        phases[d.name] = {p: round(m.get(f"time/{p}", 0.0), 1) for p in PHASES}
    total = sum(sum(p.values()) for p in phases.values())
    versions = {}
    for pkg in ("vllm", "torch", "transformers", "lm_eval", "mlflow", "dvc", "hydra-core", "compressed-tensors"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()
    run = {"command": a.command, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "gpu": gpu,
           "python": platform.python_version(), "versions": versions, "time_to_verdict_s": round(a.seconds, 1),
           "phases_s": phases, "phase_totals_s": {p: round(sum(v[p] for v in phases.values()), 1) for p in PHASES},
           "everything_else_s": round(a.seconds - total, 1), "note": a.note, "mlflow_runs": mlflow_runs()}
    (out / "run.json").write_text(json.dumps(run, indent=1) + "\n")
    print(json.dumps(run, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
