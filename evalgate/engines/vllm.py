"""`vllm` engine: a `vllm serve` subprocess on 127.0.0.1, one start per variant.

The profile runs `vllm bench serve` against it (one run per concurrency level), the evaluation runs
lm-eval's `local-completions` against the same server, so quality is measured under the exact serving
configuration. Variant mapping (engine-neutral field → `vllm serve` flag), the only place these are known:
  dtype                          → --dtype
  quantization.method fp8        → --quantization fp8 (weights quantized on the fly)
  quantization.method w4a16/w8a8 → serve quantize@<variant>'s compressed-tensors checkpoint (auto-detected)
  quantization.method checkpoint → serve the pre-quantized checkpoint (AWQ, GPTQ, compressed-tensors…)
  kv_cache.dtype fp8             → --kv-cache-dtype fp8
  speculative ngram / draft      → --speculative-config {"method": "ngram"|"draft_model", …}
  engine_args                    → --<flag> for every key (max_num_seqs, enable_prefix_caching,
                                   enforce_eager, max_num_batched_tokens, gpu_memory_utilization…),
                                   checked against vLLM's EngineArgs when vLLM is installed
"""
from __future__ import annotations

import contextlib
import json
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
from evalgate.engines.base import Endpoint, Engine, Generation, ServeInfo, VariantUnsupported
from evalgate.models import resolve_model
from evalgate.profile import requests_at

QUANT = {"none": [], "fp8": ["--quantization", "fp8"], "w4a16": [], "w8a8": [], "checkpoint": []}
KV = {"auto": [], "fp8": ["--kv-cache-dtype", "fp8"]}
VLLM_CLI = [sys.executable, "-m", "vllm.entrypoints.cli.main"]  # the offline bundle installs no console script


def _flag(key: str, value) -> list[str]:
    """engine_args entry → CLI flag(s): booleans become --x / --no-x, dicts JSON."""
    name = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return [name] if value else ["--no-" + key.replace("_", "-")]
    return [name, json.dumps(value) if isinstance(value, (dict, list)) else str(value)]


def serve_args(model_path: str, draft_path: str | None, variant: Variant, options: dict) -> list[str]:
    """The `vllm serve` argument list for a variant (tested on CPU: no vLLM import)."""
    args = [model_path, "--served-model-name", "model", "--seed", str(options.get("seed", 0)),
            "--gpu-memory-utilization", str(options.get("gpu_memory_utilization", 0.85))]
    if variant.dtype:
        args += ["--dtype", variant.dtype]
    args += QUANT[variant.quantization["method"]] + KV[variant.kv_cache["dtype"]]
    sp = variant.speculative
    if sp["method"] == "ngram":
        spec = {"method": "ngram", "num_speculative_tokens": sp["num_tokens"],
                "prompt_lookup_max": sp.get("lookup_max", sp["num_tokens"]), "prompt_lookup_min": sp.get("lookup_min", 1)}
        args += ["--speculative-config", json.dumps(spec)]
    elif sp["method"] == "draft":
        args += ["--speculative-config", json.dumps({"method": "draft_model", "model": draft_path,
                                                     "num_speculative_tokens": sp["num_tokens"]})]
    for k, v in {**options.get("engine_args", {}), **variant.engine_args}.items():
        args += _flag(k, v)
    return args


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback only
        return r.read().decode()


def parse_prometheus(text: str) -> dict[str, float]:
    """Sum of every sample of each metric family (labels dropped) from /metrics text."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{[^}]*\})?\s+([-+\d.eE]+|NaN)$", line)
        if m and m.group(2) != "NaN":
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


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


class _GpuMemorySampler(threading.Thread):
    """Peak GPU memory in use (nvidia-smi, every 0.5 s) while the server runs."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak_mb, self._stop = 0.0, threading.Event()

    def run(self):
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
                self.peak_mb = max([self.peak_mb, *(float(x) for x in out.split())])
            except (OSError, ValueError, subprocess.SubprocessError):
                return
            self._stop.wait(0.5)

    def stop(self):
        self._stop.set()


class VLLMEndpoint(Endpoint):
    def __init__(self, base_url: str, model_path: str, log_path: Path, info: ServeInfo, options: dict,
                 sampler: _GpuMemorySampler):
        self.base_url, self.model_path, self.log_path, self.info = base_url, model_path, log_path, info
        self.options, self.sampler = options, sampler

    def generate(self, prompt: str, output_len: int) -> Generation:
        """One streamed completion, timing each chunk (a chunk may carry several speculated tokens)."""
        body = json.dumps({"model": "model", "prompt": prompt, "max_tokens": output_len, "min_tokens": output_len,
                           "ignore_eos": True, "temperature": 0, "stream": True,
                           "stream_options": {"include_usage": True, "continuous_usage_stats": True}}).encode()
        req = urllib.request.Request(f"{self.base_url}/v1/completions", body, {"Content-Type": "application/json"})
        t0, times, seen = time.perf_counter(), [], 0
        with urllib.request.urlopen(req, timeout=600) as r:  # noqa: S310 - loopback only
            for raw in r:
                line = raw.decode().strip()
                if not line.startswith("data: {"):
                    continue
                usage = json.loads(line[6:]).get("usage") or {}
                n = usage.get("completion_tokens", seen)
                times += [time.perf_counter() - t0] * (n - seen)
                seen = n
        return Generation(token_times=times, prompt_tokens=usage.get("prompt_tokens", 0))

    def prompt_logprobs(self, texts: list[str], top_k: int) -> list[dict]:
        """Top-k prompt logprobs from the server (`prompt_logprobs`, a vLLM extension): truncated."""
        import numpy as np

        out: list[dict] = []
        k = min(top_k, int(self.options.get("max_logprobs", 20)))
        for text in texts:
            body = json.dumps({"model": "model", "prompt": text, "max_tokens": 1, "temperature": 0,
                               "prompt_logprobs": k}).encode()
            req = urllib.request.Request(f"{self.base_url}/v1/completions", body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=120) as r:  # noqa: S310 - loopback only
                choice = json.loads(r.read())["choices"][0]
            per_pos = choice["prompt_logprobs"][1:]   # position 0 has no distribution
            top_ids, top_lp = [], []
            for pos in per_pos:
                ranked = sorted(((int(t), v["logprob"]) for t, v in pos.items()), key=lambda x: -x[1])[:k]
                ranked += [(-1, -np.inf)] * (k - len(ranked))
                top_ids.append([t for t, _ in ranked])
                top_lp.append([lp for _, lp in ranked])
            vocab = json.loads((Path(self.model_path) / "config.json").read_text()).get("vocab_size", 0)
            out.append({"ids": choice.get("prompt_token_ids") or [], "top_ids": np.array(top_ids),
                        "top_logprobs": np.array(top_lp, dtype=float), "vocab_size": vocab})
        return out

    def bench(self, dataset: Path, wl: dict, out_dir: Path) -> dict:
        """`vllm bench serve` once per concurrency level; returns {concurrency: result JSON}."""
        results = {}
        for c in wl.get("concurrency", [1]):
            name = f"bench_c{c}.json"
            cmd = [*self.options.get("cli", VLLM_CLI), "bench", "serve", "--backend", "vllm", "--base-url", self.base_url,
                   "--endpoint", "/v1/completions", "--model", "model", "--tokenizer", self.model_path,
                   "--dataset-name", "custom", "--dataset-path", str(dataset), "--skip-chat-template",
                   "--custom-output-len", str(wl["output_len"]), "--ignore-eos",
                   "--num-prompts", str(requests_at(wl, c)), "--max-concurrency", str(c),
                   "--request-rate", "inf", "--num-warmups", str(wl["warmup"]), "--seed", str(self.options.get("seed", 0)),
                   "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
                   "--save-result", "--result-dir", str(out_dir), "--result-filename", name]
            with open(out_dir / f"bench_c{c}.log", "w") as log:
                subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True)
            results[c] = json.loads((out_dir / name).read_text())
        return results

    def stats(self) -> dict[str, float]:
        out = dict(self.info.metrics)
        out.update(log_facts(self.log_path.read_text(errors="replace")))
        out["mem_peak_mb"] = self.sampler.peak_mb
        return out

    # lm-eval 0.4.13's API models break under `use_cache`: amodel_call hashes the request of a
    # loglikelihood batch, which is None there (TypeError in hash_args; seen on the H200). Without it,
    # a sequential look's docs are requested again by the full evaluation; vLLM's prefix cache makes
    # those repeats prefill-free.
    request_cache = False

    def lm_eval_model(self):
        from lm_eval.models.openai_completions import LocalCompletionsAPI

        return LocalCompletionsAPI(base_url=f"{self.base_url}/v1/completions", model="model",
                                   tokenizer=self.model_path, tokenizer_backend="huggingface",
                                   num_concurrent=int(self.options.get("eval_concurrency", 16)),
                                   max_retries=3, timeout=600, max_length=int(self.options.get("max_length", 2048)))


class VLLMEngine(Engine):
    name = "vllm"

    def preflight(self) -> None:
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise ConfigError("engine.name: 'vllm' is not installed here (GPU host: see gpu/README.md)")

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
        try:
            import dataclasses

            from vllm.engine.arg_utils import EngineArgs
        except ImportError:
            return  # serve() will not start either; preflight says so
        known = {f.name for f in dataclasses.fields(EngineArgs)}
        for k in {**self.options.get("engine_args", {}), **v.engine_args}:
            if k not in known:
                raise VariantUnsupported(f"engine vllm: engine_args.{k} is not a vLLM engine argument")

    @contextlib.contextmanager
    def serve(self, model: ModelSpec, variant: Variant, workdir: Path):
        path = resolve_model(model)
        draft = resolve_model(model, "draft") if variant.speculative["method"] == "draft" else None
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        log_path = workdir / "server.log"
        cmd = [*self.options.get("cli", VLLM_CLI), "serve", *serve_args(path, draft, variant, self.options), "--host", "127.0.0.1",
               "--port", str(port)]
        (workdir / "server_cmd.json").write_text(json.dumps(cmd, indent=1))
        sampler = _GpuMemorySampler()
        sampler.start()
        t0 = time.perf_counter()
        with open(log_path, "w") as log:
            # own session: the server's engine-core children are stopped with it, as one process group
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, "VLLM_USE_FLASHINFER_SAMPLER": "0"})
        try:
            self._wait_healthy(proc, base, log_path, float(self.options.get("start_timeout_s", 600)))
            info = ServeInfo(start_seconds=time.perf_counter() - t0, artifacts=[log_path])
            yield VLLMEndpoint(base, path, log_path, info, self.options, sampler)
        finally:
            sampler.stop()
            stop_process_group(proc)

    @staticmethod
    def _wait_healthy(proc: subprocess.Popen, base: str, log_path: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
                raise RuntimeError(f"vllm serve exited with {proc.returncode} before it was healthy:\n" + "\n".join(tail))
            with contextlib.suppress(OSError):
                if _get(f"{base}/health", timeout=2) is not None:
                    return
            time.sleep(1)
        raise TimeoutError(f"vllm serve not healthy after {timeout:.0f} s (see {log_path})")


def stop_process_group(proc: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM the server's process group, SIGKILL what is left after `grace_s`: no orphans."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # children that outlived their parent
    proc.wait()
