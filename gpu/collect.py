"""Gather a finished GPU run into docs/results/<card>-<date>/ (the card the run saw, e.g. h100-2026-11-25):
the report and its pictures, gate verdicts, per-variant metrics, server commands and logs, the schedule,
versions, time to verdict and the per-phase breakdown (bench/gpu_verdict.py prints the same table)."""
from __future__ import annotations

import argparse
import gzip
import importlib.metadata as md
import json
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.gpu_verdict import breakdown  # noqa: E402 - the one definition of the phase table
from evalgate.repro import WARM_UP  # noqa: E402
from evalgate.results import AGAIN, VariantResults  # noqa: E402

REPORTS = ("summary.md", "gate.json", "variants.json", "plots/quality.json", "plots/levels.json", "pareto.png",
           "curves.png", "output_lengths.png", "timeline.png")
PER_VARIANT = ("status.json", "metrics.json", "server_cmd.json", "timeline.json", "quality.json", "schedule.json",
               "error.log", "quality.log", "unreproducible.json", "unreproducible.first.json")


def write_gz(path: Path, data: bytes) -> None:
    """Logs gzipped: a results folder travels with every later GPU call, beside a ≈ 60 MB bundle part,
    under the tool's 64 MiB (zcat reads them)."""
    path.write_bytes(gzip.compress(data, mtime=0))


def write_log(log: Path, dst: Path) -> None:
    """A server's log, if there is one, gzipped: its head holds the start-up facts, its tail any error."""
    if log.exists():
        lines = log.read_text(errors="replace").splitlines()
        keep = lines if len(lines) <= 600 else [*lines[:300], f"[… {len(lines) - 600} lines left out …]", *lines[-300:]]
        write_gz(dst, ("\n".join(keep) + "\n").encode())


def card() -> tuple[str, str]:
    """('h100', 'NVIDIA H100 80GB HBM3, 580.x, 81559 MiB') from nvidia-smi; ('gpu', '') without it."""
    try:
        line = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "gpu", ""
    m = re.search(r"\b([A-Z]\d{2,4})\b", line.split(",")[0])
    return (m.group(1).lower() if m else "gpu"), line


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
    ap.add_argument("--out", default=None, help="default: docs/results/<card>-<date>[-N], a new folder per run")
    a = ap.parse_args()
    name, gpu = card()
    out = Path(a.out) if a.out else _new_dir(f"docs/results/{name}-{time.strftime('%Y-%m-%d')}")
    out.mkdir(parents=True, exist_ok=True)
    for f in [*(f"reports/{r}" for r in REPORTS), "fixtures/metrics.json", "params.yaml", "dvc.lock"]:
        dst = out / f.replace("/", "_").removeprefix("reports_").removeprefix("plots_")
        if Path(f).exists() and f.endswith(".png"):   # 256 colours: a third of the bytes, the same plot
            Image.open(f).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(dst, optimize=True)
        elif Path(f).exists() and f == "dvc.lock":   # every output's hash: evidence, read rarely (zcat)
            write_gz(dst.with_name("dvc.lock.gz"), Path(f).read_bytes())
        elif Path(f).exists():
            shutil.copy(f, dst)
    for d in sorted(p for p in Path("results").iterdir() if p.is_dir()):
        dst = out / "variants" / d.name
        dst.mkdir(parents=True, exist_ok=True)
        for f in PER_VARIANT:
            if (d / f).exists() and f.endswith(".log"):
                write_gz(dst / f"{f}.gz", (d / f).read_bytes())
            elif (d / f).exists():
                shutil.copy(d / f, dst / f)
        store = VariantResults(d)
        # a look stopped it: the docs it evaluated, per sample, to recompute or inspect the stop (small: a look
        # is a quarter or half of the docs; a full evaluation's samples stay on the host); otherwise only a
        # look's answers its repeat did not bear out
        stopped = ((store.quality() or {}).get("early") or {}).get("kind") == "sequential"
        for f in sorted(d.glob("samples_*.jsonl" if stopped else "samples_*.unreproduced.jsonl")):
            write_gz(dst / f"{f.name}.gz", f.read_bytes())
        # faults.retry_unreproducible ran it again: the first evaluation's samples of the tasks it did not reproduce
        for task in sorted({r["task"] for r in store.read("unreproducible.first.json") or []}):
            for f in sorted(d.glob(f"first.samples_{task}*.jsonl")):
                write_gz(dst / f"{f.name}.gz", f.read_bytes())
        for sweep in ("", *AGAIN):   # the levels' summaries, without the per-request records; the
            prof = store.profile(sweep)   # baseline's A/A and alone sweeps as measured
            if prof is not None:
                (dst / f"levels{'_' + sweep if sweep else ''}.json").write_text(json.dumps(
                    [{k: v for k, v in lv.items() if k != "requests"} for lv in prof["levels"]], indent=1))
        for log in [d / "server.log", *sorted(d.glob("server.try*.log"))]:   # a failed try's log: its crash
            write_log(log, dst / f"{log.name}.gz")
    # the engine's warm-up server (random weights, while the fixture trained): what it cached, against
    # what each variant's server then still did itself
    # (this run's: a run whose fixture existed started none, and the last one's log is still there)
    warm_up = WARM_UP / "server.log"
    if warm_up.exists() and warm_up.stat().st_mtime >= time.time() - a.seconds:
        write_log(warm_up, out / "warm-up-server.log.gz")
    versions = {}
    for pkg in ("vllm", "torch", "transformers", "lm_eval", "mlflow", "dvc", "hydra-core", "compressed-tensors"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    table = breakdown(Path("results"), a.seconds)
    run = {"command": a.command, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "gpu": gpu,
           "python": platform.python_version(), "versions": versions, "time_to_verdict_s": round(a.seconds, 1),
           **table, "note": a.note, "mlflow_runs": mlflow_runs()}
    (out / "run.json").write_text(json.dumps(run, indent=1) + "\n")
    print(json.dumps({k: v for k, v in run.items() if k != "mlflow_runs"}, indent=1))
    print(f"collected into {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
