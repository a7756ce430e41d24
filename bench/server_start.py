"""Where one `vllm serve` start spends its time, to the millisecond: every line the server prints, stamped
with the seconds since its launch, and the longest silences between lines (what ran then is the line
before). vLLM's own stamps are whole seconds and start at its first log line, after the first imports;
evalgate.engines.vllm.start_phases reads those. Issue 11: a scheduled run's servers spend 40-50 s warm
and 70-85 s cold (H100, 2026-11-27) before vLLM logs "Starting to load model".

    python bench/server_start.py MODEL_DIR [--runs 2] [--env K=V …] [--out F.json] [-- extra vllm serve args]

Runs the server `--runs` times one after another (the first on a fresh machine meets every JIT cache
cold: torch.compile, Triton, vLLM's model-info cache), each until /health answers, then stops it.
With VLLM_LOGGING_LEVEL=DEBUG (the default here) vLLM logs its steps, "Registry inspect model class"
among them, with their times.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run as a script from the repository root
from evalgate.engines.vllm import VLLM_CLI, stop_process_group  # noqa: E402

CLI = [*VLLM_CLI, "serve"]


def one_start(model: str, extra: list[str], env: dict, port: int, timeout_s: float) -> dict:
    cmd = [*CLI, model, "--served-model-name", "model", "--port", str(port), "--host", "127.0.0.1",
           "--gpu-memory-utilization", "0.3", *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                            bufsize=1, start_new_session=True, env={**os.environ, **env})
    lines: list[tuple[float, str]] = []

    def read():
        for line in proc.stdout:
            lines.append((round(time.perf_counter() - t0, 3), line.rstrip()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    healthy = None
    while time.perf_counter() - t0 < timeout_s and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:  # noqa: S310
                if r.status == 200:
                    healthy = round(time.perf_counter() - t0, 3)
                    break
        except OSError:
            pass
        time.sleep(0.1)
    served = None
    if healthy:   # one completion: a server that answers /health but cannot generate is no start
        body = json.dumps({"model": "model", "prompt": "12+3=", "max_tokens": 4, "temperature": 0}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body,
                                     {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:  # noqa: S310 - loopback only
                served = json.loads(r.read())["choices"][0]["text"]
        except (OSError, KeyError, ValueError) as e:
            served = f"error: {e}"
    stop_process_group(proc)   # the whole group, engine core included, before the next start
    reader.join(timeout=5)
    gaps = sorted(((b[0] - a[0], a[0], a[1][:220]) for a, b in zip(lines, lines[1:])), reverse=True)[:15]
    return {"healthy_s": healthy, "completion": served, "rc": proc.returncode, "first_line_s": lines[0][0] if lines else None,
            "lines": lines, "longest_gaps": [{"gap_s": round(g, 3), "after_s": at, "after_line": text}
                                              for g, at, text in gaps]}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--env", action="append", default=[], help="K=V for the server (repeatable)")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--timeout", type=float, default=400)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    env = {"VLLM_LOGGING_LEVEL": "DEBUG", "VLLM_USE_FLASHINFER_SAMPLER": "0", "PYTHONUNBUFFERED": "1",
           **dict(kv.split("=", 1) for kv in a.env)}
    runs = []
    for i in range(a.runs):
        r = one_start(a.model, extra, env, a.port, a.timeout)
        runs.append(r)
        print(f"server_start: run {i}: healthy after {r['healthy_s']} s (first line at {r['first_line_s']} s), "
              f"completion {r['completion']!r}")
        for g in r["longest_gaps"][:10]:
            print(f"  {g['gap_s']:7.2f} s after {g['after_s']:7.2f} s: {g['after_line']}")
    if a.out:
        a.out.write_text(json.dumps({"env": env, "extra": extra, "runs": runs}, indent=1))
    return 0 if all(r["healthy_s"] and not str(r["completion"]).startswith("error") for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
