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

`--first-dummy` starts the first run with random weights (`--load-format dummy`), as the pipeline's
warm-up does while the fixture trains (evalgate.engines.vllm: `warm_machine`). After each run the bench
lists what it added to each on-disk cache a start may fill (Triton's, vLLM's, Inductor's, the CUDA
driver's, FlashInfer's, torch's extensions), with the names of the Triton kernels it compiled: which of
them the next start found, and which it compiled again. On an H100 (2026-11-28, docs/results/h100-2026-11-28)
the warm-up and then the real baseline each spent 13-14 s between "Graph capturing finished" and "Kernel JIT
monitor activated" (vLLM's V2 `warmup_kernels`); a warm run's servers spent 1 s. On an H200
(docs/results/h200-2026-11-28-3) the second start compiled the first one's 24 runtime kernels again: the
first had them in its configuration's folder (Inductor sets TRITON_CACHE_DIR there while it compiles). The
servers start with the pipeline's environment (`server_env`), which since 92d8ca4 names one Triton folder.
"""
from __future__ import annotations

import argparse
import getpass
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run as a script from the repository root
from evalgate.engines.vllm import VLLM_CLI, server_env, stop_process_group  # noqa: E402

CLI = [*VLLM_CLI, "serve"]


def cache_roots(env: dict) -> list[Path]:
    """The folders a `vllm serve` start may write JIT results to, on this machine (the defaults, and
    TRITON_CACHE_DIR, TORCHINDUCTOR_CACHE_DIR or VLLM_CACHE_ROOT where this environment sets them)."""
    home = Path.home()
    roots = [home / ".triton", home / ".cache" / "vllm", Path(tempfile.gettempdir()) / f"torchinductor_{getpass.getuser()}",
             home / ".nv" / "ComputeCache", home / ".cache" / "flashinfer", home / ".cache" / "torch_extensions"]
    roots += [Path(env[k]) for k in ("TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "VLLM_CACHE_ROOT") if env.get(k)]
    return list(dict.fromkeys(roots))


def snapshot(roots: list[Path]) -> dict[str, set[str]]:
    """Every file under each root, by root."""
    return {str(r): {str(Path(d, f)) for d, _, fs in os.walk(r) for f in fs} for r in roots}


def added(before: dict[str, set[str]], after: dict[str, set[str]]) -> dict:
    """Files new since `before`, counted by root, and the Triton kernels among them: every kernel Triton
    compiles leaves a `<name>.json` of its metadata (its `name`, `num_warps`, …) in a folder named by its
    cache key, wherever its cache is (vLLM may point TRITON_CACHE_DIR into its compile cache)."""
    new = {r: sorted(after[r] - before.get(r, set())) for r in after}
    kernels = []
    for f in (f for files in new.values() for f in files if f.endswith(".json")):
        try:
            meta = json.loads(Path(f).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and "name" in meta and "num_warps" in meta:
            kernels.append(f"{meta['name']} ({Path(f).parent.name[:12]})")
    return {"files": {r: len(v) for r, v in new.items() if v}, "triton_kernels": sorted(kernels)}


def one_start(model: str, extra: list[str], env: dict, port: int, timeout_s: float) -> dict:
    cmd = [*CLI, model, "--served-model-name", "model", "--port", str(port), "--host", "127.0.0.1",
           "--gpu-memory-utilization", "0.3", *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                            bufsize=1, start_new_session=True, env=env)
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
    own, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    if "--out" in extra:   # `gpu/session.sh bench` appends it after everything, vLLM's arguments too
        i = extra.index("--out")
        own, extra = [*own, *extra[i:i + 2]], extra[:i] + extra[i + 2:]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--env", action="append", default=[], help="K=V for the server (repeatable)")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--timeout", type=float, default=400)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--first-dummy", action="store_true", help="the first run with random weights (--load-format dummy)")
    a = ap.parse_args(own)
    # the pipeline's own server environment (evalgate.engines.vllm.server_env: fork, the shared Triton cache,
    # the dev routes), then the bench's and `--env`'s
    own_env = {"VLLM_LOGGING_LEVEL": "DEBUG", "PYTHONUNBUFFERED": "1", **dict(kv.split("=", 1) for kv in a.env)}
    full = {**server_env(), **own_env}
    env = {k: full[k] for k in full if k in own_env or k.startswith(("VLLM_", "TRITON_"))}   # what the JSON says
    roots = cache_roots(full)
    runs = []
    for i in range(a.runs):
        dummy = ["--load-format", "dummy"] if a.first_dummy and i == 0 else []
        before = snapshot(roots)
        r = one_start(a.model, [*extra, *dummy], full, a.port, a.timeout)
        r["caches_added"] = added(before, snapshot(roots))
        runs.append(r)
        print(f"server_start: run {i}{' (random weights)' if dummy else ''}: healthy after {r['healthy_s']} s "
              f"(first line at {r['first_line_s']} s), completion {r['completion']!r}")
        for g in r["longest_gaps"][:10]:
            print(f"  {g['gap_s']:7.2f} s after {g['after_s']:7.2f} s: {g['after_line']}")
        print(f"  caches: new files {r['caches_added']['files'] or 'none'}; Triton kernels compiled "
              f"{len(r['caches_added']['triton_kernels'])}: {', '.join(r['caches_added']['triton_kernels'][:40])}")
    if a.out:
        a.out.write_text(json.dumps({"env": env, "extra": extra, "runs": runs}, indent=1))
    return 0 if all(r["healthy_s"] and not str(r["completion"]).startswith("error") for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
