"""`vllm` engine: a `vllm serve` subprocess on 127.0.0.1, one start per variant.

The profile drives it with `vllm bench serve`'s own benchmark loop (`vllm.benchmarks.serve.benchmark`,
called in-process: one import for every level of every variant instead of one process start per level,
and per-request stop sequences, which the CLI's custom dataset cannot carry); the evaluation runs
lm-eval's `local-completions` against the same server, so quality is measured under the exact serving
configuration. A server can be started without waiting (`VLLMEngine.start`) and reached from another
process (`VLLMEndpoint.attach`), so the scheduler (evalgate.schedule) runs several side by side, each
with its memory share (`--kv-cache-memory-bytes`, and a `--gpu-memory-utilization` that only has to
pass vLLM's start check). Variant mapping (engine-neutral field → `vllm serve` flag), the only place these are known:
  dtype                          → --dtype
  quantization.method fp8        → --quantization fp8 (weights quantized on the fly)
  quantization.method w4a16/w8a8 → serve quantize@<variant>'s compressed-tensors checkpoint (auto-detected)
  quantization.method checkpoint → serve the pre-quantized checkpoint (AWQ, GPTQ, compressed-tensors…)
  kv_cache.dtype fp8             → --kv-cache-dtype fp8
  speculative ngram / draft      → --speculative-config {"method": "ngram"|"draft_model", …}
  engine_args.speculative_config → merged into that --speculative-config (vLLM's own keys)
  engine_args                    → --<flag> for every key (max_num_seqs, enable_prefix_caching,
                                   enforce_eager, max_num_batched_tokens, gpu_memory_utilization…),
                                   checked against vLLM's EngineArgs when vLLM is installed
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from evalgate.config import ConfigError, ModelSpec, Variant
from evalgate.engines.base import Endpoint, Engine, ServeInfo, VariantUnsupported, wait_healthy
from evalgate.gpu import sm_clock_mhz, visible_device
from evalgate.models import resolve_model

QUANT = {"none": [], "fp8": ["--quantization", "fp8"], "w4a16": [], "w8a8": [], "checkpoint": []}
KV = {"auto": [], "fp8": ["--kv-cache-dtype", "fp8"]}
VLLM_CLI = [sys.executable, "-m", "vllm.entrypoints.cli.main"]  # the offline bundle installs no console script
GIB = 2**30


class _Stopped(Exception):
    """warm_machine's caller ended: its warm-up server stops at once."""


def _appears(path: Path, deadline: float, stop: threading.Event, poll_s: float = 1.0) -> bool:
    """Wait for `path` to exist (a file the fixture writes while it trains); False at `deadline` or `stop`."""
    while not path.exists():
        if time.time() > deadline or stop.wait(poll_s):
            return False
    return True


def _flag(key: str, value) -> list[str]:
    """engine_args entry → CLI flag(s): booleans become --x / --no-x, dicts JSON."""
    name = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return [name] if value else ["--no-" + key.replace("_", "-")]
    return [name, json.dumps(value) if isinstance(value, (dict, list)) else str(value)]


def serve_args(model_path: str, draft_path: str | None, variant: Variant, options: dict,
               memory: dict | None = None) -> list[str]:
    """The `vllm serve` argument list for a variant (tested on CPU: no vLLM import). `memory`: the
    scheduler's share for this server (`kv_cache_memory_bytes`, `gpu_memory_utilization`)."""
    util = (memory or {}).get("gpu_memory_utilization", options.get("gpu_memory_utilization", 0.85))
    args = [model_path, "--served-model-name", "model", "--seed", str(options.get("seed", 0)),
            "--gpu-memory-utilization", f"{util:.4g}"]
    if memory and memory.get("kv_cache_memory_bytes"):
        args += ["--kv-cache-memory-bytes", str(int(memory["kv_cache_memory_bytes"]))]
    if options.get("max_model_len"):
        args += ["--max-model-len", str(options["max_model_len"])]
    if variant.dtype:
        args += ["--dtype", variant.dtype]
    args += QUANT[variant.quantization["method"]] + KV[variant.kv_cache["dtype"]]
    extra = {**options.get("engine_args", {}), **variant.engine_args}
    # engine_args' speculative_config: vLLM's own keys (disable_padded_drafter_batch…), merged into the
    # one --speculative-config this builds rather than passed as a second flag that would replace it
    spec = dict(extra.pop("speculative_config", None) or {})
    sp = variant.speculative
    if sp["method"] == "ngram":
        spec = {"method": "ngram", "num_speculative_tokens": sp["num_tokens"],
                "prompt_lookup_max": sp.get("lookup_max", sp["num_tokens"]),
                "prompt_lookup_min": sp.get("lookup_min", 1), **spec}
    elif sp["method"] == "draft":
        spec = {"method": "draft_model", "model": draft_path, "num_speculative_tokens": sp["num_tokens"], **spec}
    if spec:
        args += ["--speculative-config", json.dumps(spec)]
    for k, v in extra.items():
        args += _flag(k, v)
    return args


@functools.cache
def engine_arg_names() -> set[str]:
    """The field names of vLLM's `EngineArgs`, read from its source (ast) instead of importing it: the
    import took ≈ 10 s of the 14 s spent preparing seven variants before a scheduled GPU run (H100,
    2026-11-26), while DVC had long finished. Empty when vLLM or the class is not found (check() then
    imports it)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "engine" / "arg_utils.py"
        if path.is_file():
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.ClassDef) and node.name == "EngineArgs":
                    return {n.target.id for n in node.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    return set()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback only
        return r.read().decode()


def log_facts(log: str) -> dict[str, float]:
    """Numbers vLLM prints at start: weights memory and KV-cache capacity."""
    facts = {}
    if m := re.search(r"Model loading took ([\d.]+) GiB", log):
        facts["mem_weights_mb"] = float(m.group(1)) * 1024
    if m := re.search(r"GPU KV cache size: ([\d,]+) tokens", log):
        facts["kv_cache_tokens"] = float(m.group(1).replace(",", ""))
    if m := re.search(r"Maximum concurrency for [\d,]+ tokens per request: ([\d.]+)x", log):
        facts["kv_cache_max_concurrency"] = float(m.group(1))
    return facts


def start_phases(log: str) -> dict[str, float]:
    """Seconds of a server start by phase, from the timestamps vLLM logs (INFO MM-DD HH:MM:SS): process
    start → weights loading, weights, compile (torch.compile + its cache), CUDA graphs, the rest."""
    stamps = []
    for line in log.splitlines():
        if m := re.search(r"(\d\d-\d\d \d\d:\d\d:\d\d)", line):
            stamps.append((time.mktime(time.strptime("2000-" + m.group(1), "%Y-%m-%d %H:%M:%S")), line))
    if not stamps:
        return {}
    t0 = stamps[0][0]

    def first(pattern):
        return next((t - t0 for t, line in stamps if re.search(pattern, line)), None)

    marks = {"load_start": first(r"Starting to load model|Loading weights"),
             "load_done": first(r"Model loading took"),
             "compile_done": first(r"torch.compile took") or first(r"Directly load the compiled graph"),
             "graphs_done": first(r"Graph capturing finished"),
             "ready": first(r"Starting vLLM API server|Available routes")}
    out = {}
    for key, a, b in (("imports_s", None, "load_start"), ("weights_s", "load_start", "load_done"),
                      ("compile_s", "load_done", "compile_done"), ("cuda_graphs_s", "compile_done", "graphs_done"),
                      ("api_ready_s", "graphs_done", "ready")):
        lo, hi = (0.0 if a is None else marks[a]), marks[b]
        if lo is not None and hi is not None:
            out[key] = max(0.0, hi - lo)
    return out


class GpuMemorySampler(threading.Thread):
    """Peak GPU memory held by one server's processes (its process group), sampled every 0.5 s through
    NVML (pynvml): with several servers on one card, the card's total says nothing about one of them.
    It does not poll while a load sweep runs (evalgate.profile.SWEEPING); the endpoint samples once more
    when its stats are read, after the sweep (PyTorch's caching allocator keeps what the load needed)."""

    def __init__(self, pgid: int):
        super().__init__(daemon=True)
        self.pgid, self.peak_mb, self._stop, self._handles = pgid, 0.0, threading.Event(), None

    def sample(self) -> None:
        """One reading of this server's processes' GPU memory (a no-op without NVML)."""
        if self._handles is None:
            try:
                import pynvml

                pynvml.nvmlInit()
                self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            except Exception:  # noqa: BLE001 - no NVML here (CPU host, tests): no memory figure
                self._handles = []
        if not self._handles:
            return
        import pynvml

        used = 0
        for h in self._handles:
            with contextlib.suppress(Exception):
                for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h):
                    with contextlib.suppress(OSError):
                        if os.getpgid(p.pid) == self.pgid:
                            used += p.usedGpuMemory or 0
        self.peak_mb = max(self.peak_mb, used / 2**20)

    def run(self):
        from evalgate.profile import SWEEPING

        while not self._stop.is_set():
            if SWEEPING.is_set():
                self._stop.wait(0.05)
                continue
            self.sample()
            if self._handles == []:
                return
            self._stop.wait(0.5)

    def stop(self):
        self._stop.set()


def records_from_bench(result: dict, requests: list[dict]) -> list[dict]:
    """`vllm bench serve`'s per-request lists → evalgate.profile records (times relative to the first send)."""
    t0 = min(result["start_times"]) if result.get("start_times") else 0.0
    out = []
    for i, req in enumerate(requests):
        ttft, itl, n = result["ttfts"][i], list(result["itls"][i]), int(result["output_lens"][i])
        ok = not result["errors"][i] and n > 0
        out.append({"index": req.get("index"), "source": req.get("source"), "ok": ok,
                    "prompt_tokens": int(result["input_lens"][i]), "output_tokens": n if ok else 0,
                    "start": result["start_times"][i] - t0, "ttft": ttft, "itl": itl, "e2el": ttft + sum(itl),
                    "capped": n >= int(req["max_tokens"]), "text": result["generated_texts"][i],
                    **({} if ok else {"error": str(result["errors"][i])[:500]})})
    return out


def bench_requests(requests: list[dict], count_tokens, first_id: int = 0) -> list[dict]:
    """Workload rows → `vllm.benchmarks.datasets.SampleRequest` fields: the prompt, its length, the
    request's cap as `expected_output_len` (sent as max_tokens), its stop sequences as a per-request
    override of the body, and an id unique over the run."""
    return [{"prompt": r["prompt"], "prompt_len": count_tokens(r["prompt"]), "expected_output_len": int(r["max_tokens"]),
             "request_id": f"eg-{first_id + i + 1}",
             "request_overrides": {"stop": list(r["stop"])} if r.get("stop") else None}
            for i, r in enumerate(requests)]


def bench_kwargs(base_url: str, concurrency: int | None, rate: float | None, burstiness: float, ignore_eos: bool,
                 warmup: int) -> dict:
    """The arguments of `vllm.benchmarks.serve.benchmark` for one load level (what `vllm bench serve
    --max-concurrency/--request-rate/--burstiness/--ignore-eos/--num-warmups --temperature 0` sets)."""
    return dict(endpoint_type="vllm", api_url=f"{base_url}/v1/completions", base_url=base_url, model_id="model",
                model_name="model", logprobs=None, request_rate=rate or math.inf, burstiness=burstiness,
                disable_tqdm=True, num_warmups=warmup, profile=False,
                selected_percentile_metrics=["ttft", "tpot", "itl", "e2el"], selected_percentiles=[50.0, 90.0, 99.0],
                ignore_eos=ignore_eos, goodput_config_dict={}, max_concurrency=concurrency, lora_modules=None,
                extra_headers=None, extra_body={"temperature": 0.0}, ready_check_timeout_sec=0)


@contextlib.contextmanager
def quiet_heap():
    """No garbage collection while a round's client runs (one asyncio loop, in this process, timing every
    token): a full collection of a large heap (lm-eval's in the serial stage, several profiles' records
    in the scheduler) would pause it mid-round. Everything alive before is frozen (never traversed),
    collection resumes after. No `gc.collect()` first: once per round it cost ≈ 8 s per profile on an
    H100 (2026-11-26, a 340 s verdict), while the client used ≈ 40 % of a core at c128 (client_cpu_pct)."""
    import gc

    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


# VLLM_SERVER_DEV_MODE: the /reset_prefix_cache route (VLLMEndpoint.reset_cache)
SERVER_ENV = {"VLLM_USE_FLASHINFER_SAMPLER": "0", "VLLM_SERVER_DEV_MODE": "1"}
# `vllm serve` sets spawn for its engine-core process unless this is set, so the engine core imports torch
# and vLLM all over again: 20.2 s from the API server's arguments to the core's handshake with spawn, 0.5 s
# forked; a whole start 51.1 s → 38.8 s (H100 2026-11-27, one server, `bench/server_start.py`,
# docs/results/h100-2026-11-27-4). Fork is vLLM's own library default; vLLM falls back to spawn by itself
# where CUDA is already initialised in the parent. The environment's own setting wins.
SERVER_DEFAULTS = {"VLLM_WORKER_MULTIPROC_METHOD": "fork"}


def triton_cache_dir() -> str:
    """Triton's own default cache folder (`$TRITON_HOME` or home, `.triton/cache`), named explicitly for
    every server. Left unset, a server that compiles its graphs (a configuration new to the machine) has it
    set process-wide by Inductor (`CachingAutotuner`, only while TRITON_CACHE_DIR is unset) to that
    configuration's folder under vLLM's compile cache, so the ≈ 24 kernels every server JIT-compiles after
    its CUDA graphs (the sampler's, the model runner's: the same for every configuration) land there, and
    the next server of another configuration, or one that loads the cached graphs, compiles them again:
    13.5 s, then 14.3 s, then 0.2 s for three starts of the baseline on an H200 (random weights first, as
    the warm-up does), the second compiling the same 24 kernels, hash for hash, into ~/.triton
    (bench/server_start.py, docs/results/h200-2026-11-28-3). One folder for all: each kernel once a machine."""
    return str(Path(os.environ.get("TRITON_HOME") or Path.home()) / ".triton" / "cache")


def server_env() -> dict[str, str]:
    """The environment of a `vllm serve` process: SERVER_DEFAULTS and the shared Triton cache under this
    one's, SERVER_ENV over it."""
    return {**SERVER_DEFAULTS, "TRITON_CACHE_DIR": triton_cache_dir(), **os.environ, **SERVER_ENV}


SPEC_KEYS = ("spec_decode_num_drafts", "spec_decode_draft_tokens", "spec_decode_accepted_tokens")


class VLLMEndpoint(Endpoint):
    supports_rate = True

    def __init__(self, base_url: str, model_path: str, log_path: Path, info: ServeInfo, options: dict,
                 sampler: GpuMemorySampler | None = None):
        self.base_url, self.model_path, self.log_path, self.info = base_url, model_path, log_path, info
        self.options, self.sampler, self._tok, self._sent = options, sampler, None, 0

    def record(self) -> dict:
        """What another process needs to attach to this server (`attach`)."""
        return {"base_url": self.base_url, "model_path": self.model_path, "log_path": str(self.log_path),
                "start_seconds": self.info.start_seconds, "options": self.options}

    @classmethod
    def attach(cls, rec: dict) -> VLLMEndpoint:
        return cls(rec["base_url"], rec["model_path"], Path(rec["log_path"]),
                   ServeInfo(start_seconds=rec.get("start_seconds", 0.0)), rec.get("options", {}))

    @functools.cached_property
    def _card_handle(self):
        return visible_device()

    def _tokenizer(self):
        if self._tok is None:
            from vllm.tokenizers import get_tokenizer

            self._tok = get_tokenizer(self.model_path)
        return self._tok

    def run_requests(self, requests: list[dict], concurrency: int | None, rate: float | None = None,
                     burstiness: float = 1.0, ignore_eos: bool = False, warmup: int = 0) -> tuple[list[dict], float, dict]:
        """One load level through vLLM's own benchmark loop: greedy, each request with its `max_tokens`
        cap and stop sequences; closed loop at `concurrency`, or Poisson/gamma arrivals at `rate`."""
        import asyncio

        from vllm.benchmarks.datasets import SampleRequest
        from vllm.benchmarks.serve import TaskType, benchmark

        tok = self._tokenizer()
        samples = []
        for spec in bench_requests(requests, lambda p: len(tok(p).input_ids), self._sent):
            samples.append(SampleRequest(**spec))
        self._sent += len(requests)   # unique ids: vLLM refuses a request id that is still running
        log = io.StringIO()
        with contextlib.redirect_stdout(log), quiet_heap():   # its result tables go to bench.log
            cpu0 = time.thread_time()
            result = asyncio.run(benchmark(task_type=TaskType.GENERATION, tokenizer=tok, input_requests=samples,
                                           **bench_kwargs(self.base_url, concurrency, rate, burstiness, ignore_eos, warmup)))
            client_cpu_s = time.thread_time() - cpu0
        with open(self.log_path.with_name("bench.log"), "a") as f:
            f.write(log.getvalue())
        extras = {k: result[k] for k in SPEC_KEYS if k in result}
        extras["client_cpu_s"] = client_cpu_s
        clock = sm_clock_mhz(self._card_handle)
        if clock is not None:
            extras["sm_clock_mhz"] = clock
        extras["vllm"] = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return records_from_bench(result, requests), float(result["duration"]), extras

    def reset_cache(self) -> None:
        """`POST /reset_prefix_cache` (a dev route: the server runs with VLLM_SERVER_DEV_MODE=1). Without
        it the A/A sweep found every prompt cached by the first sweep: on an H100 (2026-11-26) its c32
        level's median TPOT was 15 % lower and its throughput 10 % higher than the first sweep's."""
        req = urllib.request.Request(f"{self.base_url}/reset_prefix_cache", b"", method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - loopback only
            r.read()

    def prompt_logprobs(self, texts: list[str], top_k: int) -> list[dict]:
        """Top-k prompt logprobs from the server (`prompt_logprobs`, a vLLM extension): truncated. The
        texts go 16 at a time (one by one they cost 10.6 s of the critical path on an H100)."""
        from concurrent.futures import ThreadPoolExecutor

        import numpy as np

        k = min(top_k, int(self.options.get("max_logprobs", 20)))
        vocab = json.loads((Path(self.model_path) / "config.json").read_text()).get("vocab_size", 0)

        def one(text: str) -> dict:
            body = json.dumps({"model": "model", "prompt": text, "max_tokens": 1, "temperature": 0,
                               "prompt_logprobs": k}).encode()
            req = urllib.request.Request(f"{self.base_url}/v1/completions", body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=120) as r:  # noqa: S310 - loopback only
                choice = json.loads(r.read())["choices"][0]
            top_ids, top_lp = [], []
            for pos in choice["prompt_logprobs"][1:]:   # position 0 has no distribution
                ranked = sorted(((int(t), v["logprob"]) for t, v in pos.items()), key=lambda x: -x[1])[:k]
                ranked += [(-1, -np.inf)] * (k - len(ranked))
                top_ids.append([t for t, _ in ranked])
                top_lp.append([lp for _, lp in ranked])
            return {"ids": choice.get("prompt_token_ids") or [], "top_ids": np.array(top_ids),
                    "top_logprobs": np.array(top_lp, dtype=float), "vocab_size": vocab}

        with ThreadPoolExecutor(16) as pool:
            return list(pool.map(one, texts))

    def stats(self) -> dict[str, float]:
        out = dict(self.info.metrics)
        log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        out.update(log_facts(log))
        out.update({f"time/start/{k}": v for k, v in start_phases(log).items()})
        if self.sampler is not None:
            self.sampler.sample()   # after the sweep, during which it did not poll
            if self.sampler.peak_mb:
                out["mem_peak_mb"] = self.sampler.peak_mb
        return out

    # lm-eval 0.4.13's API models break under `use_cache`: amodel_call hashes the request of a
    # loglikelihood batch, which is None there (TypeError in hash_args; seen on the H200). Without it,
    # a sequential look's docs are requested again by the full evaluation; vLLM's prefix cache makes
    # those repeats prefill-free.
    request_cache = False

    def lm_eval_model(self):
        from lm_eval.models.openai_completions import LocalCompletionsAPI

        # several prompts per request (the completions API takes a list) and many requests in flight: on
        # an H100 one prompt per request at 32 in flight took 34 s for the fixture's 2,400 requests
        return LocalCompletionsAPI(base_url=f"{self.base_url}/v1/completions", model="model",
                                   tokenizer=self.model_path, tokenizer_backend="huggingface",
                                   num_concurrent=int(self.options.get("eval_concurrency", 16)),
                                   batch_size=int(self.options.get("eval_batch_size", 1)),
                                   max_retries=3, timeout=600, max_length=int(self.options.get("max_length", 2048)))


@dataclasses.dataclass
class VLLMServer:
    """A started `vllm serve` process (its own process group) that may not be healthy yet."""
    proc: subprocess.Popen
    base_url: str
    model_path: str
    log_path: Path
    options: dict
    sampler: GpuMemorySampler
    t0: float
    start_seconds: float | None = None

    def wait(self, timeout: float | None = None) -> VLLMEndpoint:
        """Block until /health answers; a clear error if the process died or the time ran out."""
        timeout = float(timeout or self.options.get("start_timeout_s", 600))
        wait_healthy(self.proc, self.log_path, lambda: _get(f"{self.base_url}/health", timeout=2) is not None,
                     timeout, "vllm serve")
        self.start_seconds = time.perf_counter() - self.t0
        return self.endpoint()

    def endpoint(self) -> VLLMEndpoint:
        info = ServeInfo(start_seconds=self.start_seconds or 0.0, artifacts=[self.log_path])
        return VLLMEndpoint(self.base_url, self.model_path, self.log_path, info, self.options, self.sampler)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def hold(self, stopped: bool) -> None:
        hold_process_group(self.proc, stopped)

    def stop(self) -> None:
        self.sampler.stop()
        stop_process_group(self.proc)


class VLLMEngine(Engine):
    name = "vllm"
    attachable = True

    def preflight(self) -> None:
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise ConfigError("engine.name: 'vllm' is not installed here (GPU host: see gpu/README.md)")

    def warm_client(self) -> None:
        """`vllm bench serve`'s loop: its import (vLLM itself) made the first profile of a scheduled run
        ≈ 13 s longer than the others (30 s against 16–17 s, H100 2026-11-26)."""
        with contextlib.suppress(ImportError):
            import vllm.benchmarks.serve  # noqa: F401

    def warm_machine(self, model: ModelSpec, variant: Variant | None = None, workdir: Path | None = None,
                     stop: threading.Event | None = None, wait_s: float = 900.0) -> str | None:
        """A machine's first vLLM servers fill per-machine caches, each on its own and on the critical path:
        the model class's inspection (a fresh interpreter importing vLLM: 27 s in the baseline's start,
        H200 docs/results/h200-2026-11-27-21) and torch.compile's artifacts (14.5 s), against a 31 s start
        once they exist (-22). Here they are filled once, while the inputs are built, as soon as the model's
        config.json exists (the fixture writes it, its tokenizer and generation config before training):

        - while the model's weights are not written yet (the fixture trains them): `variant`'s own server
          started with random weights (`--load-format dummy`, in `workdir`), up, then stopped. vLLM keys
          its compile cache on the configuration, not the weights (LoadConfig hashes nothing), so the
          scheduled server of `variant` (the baseline, profiled first) finds its graphs compiled, and every
          server finds the inspection done (H100 docs/results/h100-2026-11-27-18: the baseline started in
          51.9 s, its graphs loaded from the cache; the 13 s between CUDA graphs and ready stayed);
        - otherwise (the weights exist: servers may start any moment) the inspection alone, as vLLM's
          registry does it, in a subprocess.

        Skipped where the cache exists or the model is a hub id (its config is not local). `stop` (set by
        the caller when it ends) stops the warm-up server at once. Returns what it did, for the log."""
        root = Path(os.environ.get("VLLM_CACHE_ROOT")
                    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vllm").expanduser()
        if any((root / "modelinfos").glob("*.json")) or model.source != "local":
            return None
        stop = stop or threading.Event()
        folder, deadline = Path(model.id), time.time() + wait_s
        if not _appears(folder / "config.json", deadline, stop, poll_s=2.0):
            return None
        t0, failed = time.time(), ""
        weights = any(f.suffix in (".safetensors", ".bin", ".pt") for f in folder.iterdir())   # what vLLM loads
        if variant is not None and workdir is not None and not weights:
            try:
                return self._warm_server(model, variant, workdir, stop, deadline, t0)
            except Exception as e:  # noqa: BLE001 - only a head start: the inspection alone, below
                failed = f"warm-up server failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
                if stop.is_set():
                    return failed
                failed += "; "
        for tries_left in (2, 1, 0):   # seen before save_pretrained finished writing it: read again
            try:
                archs = json.loads((folder / "config.json").read_text()).get("architectures") or []
                break
            except json.JSONDecodeError:
                if not tries_left:
                    raise
                time.sleep(1.0)
        # the registry's own per-architecture inspection (private, but the public one needs a ModelConfig,
        # i.e. the whole engine configuration): it reads and fills the same cache file the servers read
        code = ("import sys; from vllm.model_executor.models.registry import ModelRegistry\n"
                "for a in sys.argv[1:]: ModelRegistry._try_inspect_model_cls(a)")
        p = subprocess.run([sys.executable, "-c", code, *archs], env=server_env(), capture_output=True, text=True,
                           timeout=600)
        if p.returncode:
            tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no output"]
            return f"{failed}model info for {', '.join(archs)} not cached (exit {p.returncode}: {tail[0][:200]})"
        return f"{failed}model info for {', '.join(archs)} cached in {time.time() - t0:.1f} s"

    def _warm_server(self, model: ModelSpec, variant: Variant, workdir: Path, stop: threading.Event,
                     deadline: float, t0: float) -> str:
        """warm_machine's server: `variant` with random weights once its tokenizer exists, until healthy."""
        if not _appears(Path(model.id) / "tokenizer_config.json", deadline, stop):
            return "warm-up server not started (no tokenizer)"
        need = self.memory_need(model, variant)
        _, total = self.device_memory() or (0, 0)
        # the KV-cache bytes are part of vLLM's compile-cache key (CacheConfig), so the scheduled server's
        # own; the fraction only has to pass vLLM's free-memory check beside the fixture's training
        util = min(0.95, 1.05 * (need["kv_cache_memory_bytes"] + need["overhead"] + GIB) / total) if total else None
        memory = {"kv_cache_memory_bytes": need["kv_cache_memory_bytes"], **({"gpu_memory_utilization": util} if util else {})}
        dummy = dataclasses.replace(variant, engine_args={**variant.engine_args, "load_format": "dummy"})
        workdir.mkdir(parents=True, exist_ok=True)
        server = self.start(model, dummy, workdir, memory)
        try:
            def healthy() -> bool:
                if stop.is_set():
                    raise _Stopped
                return _get(f"{server.base_url}/health", timeout=2) is not None

            try:
                wait_healthy(server.proc, server.log_path, healthy, max(1.0, deadline - time.time()),
                             "vllm serve (warm-up, dummy weights)")
            except _Stopped:
                return f"warm-up server stopped before it was up ({time.time() - t0:.1f} s)"
            return (f"a {variant.name} server with random weights up in {time.time() - t0:.1f} s: vLLM's model "
                    f"info and compile caches filled ({server.log_path})")
        finally:
            server.stop()

    def check(self, model: ModelSpec, variant: Variant) -> None:
        v = variant
        if v.quantization["method"] not in QUANT:
            raise VariantUnsupported(f"engine vllm: quantization.method {v.quantization['method']!r} is not "
                                     f"supported (supported: {', '.join(QUANT)})")
        if v.kv_cache["dtype"] not in KV:
            raise VariantUnsupported(f"engine vllm: kv_cache.dtype {v.kv_cache['dtype']!r} is not supported "
                                     f"(supported: {', '.join(KV)})")
        if v.speculative["method"] == "draft" and not model.draft:
            raise VariantUnsupported("engine vllm: speculative.method 'draft' needs model.draft")
        keys = set(self.options.get("engine_args", {})) | set(v.engine_args)
        names = engine_arg_names()
        unknown = sorted(keys - names)
        if not unknown:
            return
        try:   # a name the source read did not find: vLLM's own dataclass decides
            from vllm.engine.arg_utils import EngineArgs

            known = {f.name for f in dataclasses.fields(EngineArgs)}
        except ImportError:
            if not names:
                return  # serve() will not start either; preflight says so
            known = names
        for k in unknown:
            if k not in known:
                raise VariantUnsupported(f"engine vllm: engine_args.{k} is not a vLLM engine argument")

    def memory_need(self, model: ModelSpec, variant: Variant) -> dict:
        """Bytes this variant's server holds: weights (from the files served; fp8 on the fly halves
        16-bit weights), the draft's, the KV-cache budget every server gets (`kv_cache_memory_gb`: the
        same bytes for every variant, so one that stores more tokens per byte shows it as capacity) and
        a fixed overhead (CUDA context, activations, CUDA graphs: `server_overhead_gb`)."""
        def size(path):
            return sum(f.stat().st_size for f in Path(path).glob("*.safetensors")) if path and Path(path).is_dir() else 0

        weights = size(model.id)
        if variant.quantization["method"] == "fp8":
            weights //= 2
        draft = size(model.draft) if variant.speculative["method"] == "draft" else 0
        kv = int(float(self.options.get("kv_cache_memory_gb", 4)) * GIB)
        overhead = int(float(self.options.get("server_overhead_gb", 3)) * GIB)
        return {"weights": weights + draft, "kv_cache_memory_bytes": kv, "overhead": overhead,
                "total": weights + draft + kv + overhead}

    def start(self, model: ModelSpec, variant: Variant, workdir: Path, memory: dict | None = None) -> VLLMServer:
        """Launch `vllm serve` (own process group) and return at once; `VLLMServer.wait` for health."""
        path = resolve_model(model)
        draft = resolve_model(model, "draft") if variant.speculative["method"] == "draft" else None
        port = _free_port()
        log_path = workdir / "server.log"
        cmd = [*self.options.get("cli", VLLM_CLI), "serve", *serve_args(path, draft, variant, self.options, memory),
               "--host", "127.0.0.1", "--port", str(port)]
        (workdir / "server_cmd.json").write_text(json.dumps(cmd, indent=1))
        t0 = time.perf_counter()
        with open(log_path, "w") as log:
            # own session: the server's engine-core children are stopped with it, as one process group
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                    env=server_env())
        (workdir / "server.pid").write_text(str(proc.pid))   # its process group: gpu/pipeline.sh --finish stops it
        sampler = GpuMemorySampler(proc.pid)
        sampler.start()
        return VLLMServer(proc, f"http://127.0.0.1:{port}", path, log_path, self.options, sampler, t0)

    def attach(self, rec: dict) -> VLLMEndpoint:
        return VLLMEndpoint.attach(rec)

    @staticmethod
    def device_memory() -> tuple[int, int] | None:
        """(free, total) bytes of the card the servers will use (CUDA_VISIBLE_DEVICES honoured) through
        NVML; None without one."""
        try:
            import pynvml

            handle = visible_device()
            if handle is None:
                return None
            info = pynvml.nvmlDeviceGetMemoryInfo(handle)
            return int(info.free), int(info.total)
        except Exception:  # noqa: BLE001 - no NVML: no capacity planning (one server at a time is safe)
            return None

    @contextlib.contextmanager
    def serve(self, model: ModelSpec, variant: Variant, workdir: Path):
        """The serial path: one server alone, with the same KV-cache bytes the scheduler gives it."""
        memory = None
        if self.options.get("kv_cache_memory_gb"):
            memory = {"kv_cache_memory_bytes": self.memory_need(model, variant)["kv_cache_memory_bytes"],
                      "gpu_memory_utilization": float(self.options.get("gpu_memory_utilization", 0.5))}
        server = self.start(model, variant, workdir, memory)
        try:
            yield server.wait()
        finally:
            server.stop()


def hold_process_group(proc: subprocess.Popen, stopped: bool) -> None:
    """SIGSTOP (`stopped`) or SIGCONT to the server's whole process group (it starts its own session): a
    stopped server runs nothing on the host's cores and queues nothing on the card, while keeping its memory
    and its state. The scheduler holds the idle neighbours of each profile this way (evalgate.schedule)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGSTOP if stopped else signal.SIGCONT)


def group_processes(pgids: set[int]) -> list:
    """The processes (psutil) still running in these process groups, found by group id, so children whose
    parent already died (no longer in its process tree) count too; a zombie has ended (only its parent's
    wait is left) and does not."""
    import psutil

    out = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(p.pid) in pgids and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
    return out


def stop_process_group(proc: subprocess.Popen, grace_s: float = 30) -> None:
    """Stop the server and every process of its group (psutil): SIGTERM to all of them, then wait up to
    `grace_s` for all of them (not only the leader: vLLM's engine core frees the GPU after it), then
    SIGKILL what is left. The group is found by its id, so children whose parent already died (no
    longer in its process tree) are stopped too: no orphans."""
    import psutil

    for p in group_processes({proc.pid}):
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
            p.resume()   # a held (SIGSTOPped) process acts on SIGTERM only once continued
    deadline = time.monotonic() + grace_s
    while (left := group_processes({proc.pid})) and time.monotonic() < deadline:
        time.sleep(0.1)
    for p in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
