"""`llamacpp` engine: llama.cpp's own `llama-server` on 127.0.0.1, one start per variant, serving a GGUF —
the gguf stage's f16 conversion of the model, or quantize@<variant>'s GGUF type (`llama-quantize`).

Why `llama-server` (the C++ binary) and not llama-cpp-python's `llama_cpp.server`: it is what llama.cpp
users deploy (Ollama-style serving), with parallel slots and continuous batching (llama_cpp.server runs one
request at a time behind a lock, so a concurrency ladder would measure a queue), speculative decoding with
a draft model (llama_cpp.server has prompt lookup only) and every flag below under its own name; the same
build gives llama-quantize, llama-perplexity and llama-bench. Its one gap: `/v1/completions` refuses
`echo` ("Only no echo is supported"), so no prompt log-probs come back — lm-eval's loglikelihood tasks
(multiple_choice, loglikelihood, loglikelihood_rolling) cannot run through it and are skipped (a gated
one is a config error, before anything loads), and fidelity uses llama.cpp's own tool for it instead:
`llama-perplexity --kl-divergence` against the baseline's logits (full-vocabulary KL, top-token agreement,
PPL ratio), as llama.cpp users judge a quantization.

Variant mapping (engine-neutral field → llama-server flag), the only place these are known:
  quantization.method q8_0/q4_k_m/q2_k/… → serve quantize@<variant>'s GGUF (none: the f16 GGUF)
  kv_cache.dtype q8_0/q4_0/… (int8 → q8_0, int4 → q4_0) → --cache-type-k/--cache-type-v (`kv_cache.v_dtype`
                                   sets V alone); a quantized V cache needs flash attention: --flash-attn on
  speculative.method draft         → --spec-draft-model <draft GGUF> --spec-type draft-simple --spec-draft-n-max N
  speculative.method ngram         → --spec-type ngram-simple --spec-ngram-simple-size-n L --spec-ngram-simple-size-m N
  engine_args                      → llama-server flags by name (ctx_size → --ctx-size, flash_attn on|off|auto,
                                     batch_size, ubatch_size, parallel, cache_reuse, cache_ram…; true → --x,
                                     false → --no-x), checked against `llama-server --help`; `cache_prompt`
                                     is a request field (llama-server's prompt cache), sent with every request
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import re
import subprocess
import time
import urllib.request
from pathlib import Path

from evalgate.config import GGUF_KV_TYPES, GGUF_TYPES, ConfigError, ModelSpec, Variant
from evalgate.engines.base import Endpoint, Engine, Generation, ServeInfo, VariantUnsupported, record, wait_healthy
from evalgate.engines.vllm import _free_port, _get, hold_process_group, stop_process_group

KV = {"auto": None, "int8": "q8_0", "int4": "q4_0", **{t: t for t in GGUF_KV_TYPES}}
UNQUANTIZED_KV = ("f32", "f16", "bf16")
REQUEST_FIELDS = ("cache_prompt",)       # engine_args that are per-request fields of llama-server's API
NO_PROMPT_LOGPROBS = ("llama-server returns no prompt log-probs (its /v1/completions refuses `echo`), which "
                      "lm-eval's loglikelihood requests need")
SKIPPED_OUTPUT_TYPES = {t: NO_PROMPT_LOGPROBS for t in ("loglikelihood", "multiple_choice", "loglikelihood_rolling")}
SPEC_METRICS = {"llamacpp:spec_decode_num_drafts_total": "spec_decode_num_drafts",
                "llamacpp:spec_decode_num_draft_tokens_total": "spec_decode_draft_tokens",
                "llamacpp:spec_decode_num_accepted_tokens_total": "spec_decode_accepted_tokens",
                "llamacpp:prompt_tokens_cached_total": "prompt_tokens_cached",
                "llamacpp:prompt_tokens_total": "prompt_tokens_computed"}


def _engine_args(variant: Variant, options: dict) -> dict:
    return {**(options.get("engine_args") or {}), **variant.engine_args}


def kv_types(variant: Variant) -> tuple[str | None, str | None]:
    """(K, V) cache types for --cache-type-k/-v; None: llama.cpp's default (f16)."""
    kv = variant.kv_cache
    k = KV.get(kv["dtype"])
    v = KV.get(kv.get("v_dtype", kv["dtype"]))
    return k, v


def head_dim(model: ModelSpec) -> int | None:
    """The attention head size, from the HF config (no model load); None when unknown."""
    with contextlib.suppress(OSError, ValueError, KeyError, ZeroDivisionError, TypeError):
        c = json.loads((Path(model.id) / "config.json").read_text())
        return int(c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"])
    return None


def flash_attn(variant: Variant, options: dict) -> str:
    """on | off | auto: the variant's (YAML's on/off arrive as booleans), else the engine default; a
    quantized V cache turns an `auto` into `on` (llama.cpp requires it)."""
    fa = _engine_args(variant, options).get("flash_attn", "auto")
    fa = {True: "on", False: "off"}.get(fa, str(fa))
    _, v = kv_types(variant)
    return "on" if fa == "auto" and v and v not in UNQUANTIZED_KV else fa


def _flag(key: str, value) -> list[str]:
    """engine_args entry → llama-server flag(s): true → --x, false → --no-x, else --x value."""
    name = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return [name] if value else ["--no-" + key.replace("_", "-")]
    return [name, json.dumps(value) if isinstance(value, (dict, list)) else str(value)]


def model_flags(variant: Variant, options: dict) -> list[str]:
    """Flags that change what the model computes (KV-cache types, flash attention): llama-server,
    llama-perplexity and llama-bench all take them, so fidelity and llama-bench run as the server does."""
    k, v = kv_types(variant)
    out = ["--flash-attn", flash_attn(variant, options)]
    if k:
        out += ["--cache-type-k", k]
    if v:
        out += ["--cache-type-v", v]
    return out


def server_args(gguf: str, draft_gguf: str | None, variant: Variant, options: dict) -> list[str]:
    """The `llama-server` argument list for a variant (tested without a server)."""
    # --log-verbosity 4: the load facts (weights and KV-cache buffers, flash attention) are logged at trace level
    args = ["--model", gguf, "--alias", "model", "--seed", str(options.get("seed", 0)), "--metrics", "--no-webui",
            "--log-verbosity", "4", *model_flags(variant, options)]
    sp = variant.speculative
    if sp["method"] == "draft":
        args += ["--spec-draft-model", str(draft_gguf), "--spec-type", "draft-simple",
                 "--spec-draft-n-max", str(sp["num_tokens"])]
    elif sp["method"] == "ngram":
        args += ["--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", str(sp.get("lookup_max", 2)),
                 "--spec-ngram-simple-size-m", str(sp["num_tokens"])]
    for k, val in _engine_args(variant, options).items():
        if k in REQUEST_FIELDS or k == "flash_attn":
            continue
        args += _flag(k, val)
    return args


@contextlib.contextmanager
def _no_proxy():
    """Loopback requests must not go through an HTTP proxy from the environment."""
    saved = {k: os.environ.pop(k) for k in ("http_proxy", "HTTP_PROXY") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _post(url: str, body: dict, timeout: float = 120) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - loopback only
        return json.loads(r.read())


def prometheus(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name.strip()] = float(value)
    return out


def log_facts(log: str) -> dict[str, float]:
    """What llama-server prints at start: weights and KV-cache memory, KV cells, the flash-attention choice."""
    facts = {}
    sizes = [float(x) for x in re.findall(r"CPU(?:_Mapped)? model buffer size\s*=\s*([\d.]+) MiB", log)]
    if sizes:
        facts["mem_weights_mb"] = sum(sizes)
    if m := re.search(r"llama_kv_cache: size =\s*([\d.]+) MiB \(\s*(\d+) cells,\s*\d+ layers,\s*(\d+)/\d+ seqs", log):
        facts["kv_cache_mb"], facts["kv_cache_tokens"] = float(m.group(1)), float(m.group(2)) * int(m.group(3))
    # `auto` is resolved later in the log ("Flash Attention enabled"); on/off are stated in the context's setup
    if m := re.search(r"Flash Attention (enabled|disabled)|flash_attn\s*=\s*(enabled|disabled)", log):
        facts["flash_attn"] = 1.0 if "enabled" in m.groups() else 0.0
    return facts


def perplexity_stats(text: str) -> dict[str, float]:
    """llama-perplexity --kl-divergence's summary → fidelity metrics (full vocabulary: not truncated)."""
    pats = {"kl_mean": r"Mean\s+KLD:\s*([-\d.]+)", "kl_p99": r"99\.0%\s+KLD:\s*([-\d.]+)",
            "kl_max": r"Maximum KLD:\s*([-\d.]+)", "top1_agreement": r"Same top p:\s*([-\d.]+)",
            "ppl_ratio": r"Mean PPL\(Q\)/PPL\(base\)\s*:\s*([-\d.]+)", "ppl": r"Mean PPL\(Q\)\s*:\s*([-\d.]+)",
            "ppl_base": r"Mean PPL\(base\)\s*:\s*([-\d.]+)", "rms_dp_pct": r"RMS Δp\s*:\s*([-\d.]+)"}
    out = {}
    for k, p in pats.items():
        if m := re.search(p, text):
            out[k] = float(m.group(1))
    if "top1_agreement" in out:
        out["top1_agreement"] /= 100
    out["kl_truncated"] = 0.0
    return out


class LlamaCppEndpoint(Endpoint):
    supports_rate = True
    skipped_output_types = SKIPPED_OUTPUT_TYPES
    request_cache = False     # lm-eval 0.4.13's API models break under use_cache (see the vllm adapter)
    own_fidelity = True       # llama-perplexity's KL-divergence mode (reference_fidelity)

    def __init__(self, base_url: str, model: ModelSpec, variant: Variant, log_path: Path, info: ServeInfo,
                 options: dict, pid: int | None = None):
        self.base_url, self.model, self.variant, self.log_path = base_url, model, variant, log_path
        self.info, self.options, self.pid = info, options, pid
        self.cache_prompt = bool(_engine_args(variant, options).get("cache_prompt", False))

    def record(self) -> dict:
        return {"base_url": self.base_url, "model": dataclasses.asdict(self.model), "variant": dataclasses.asdict(self.variant),
                "log_path": str(self.log_path), "start_seconds": self.info.start_seconds, "options": self.options,
                "pid": self.pid}

    @classmethod
    def attach(cls, rec: dict) -> LlamaCppEndpoint:
        return cls(rec["base_url"], ModelSpec(**rec["model"]), Variant(**rec["variant"]), Path(rec["log_path"]),
                   ServeInfo(start_seconds=rec.get("start_seconds", 0.0)), rec.get("options", {}), rec.get("pid"))

    # --- the load generator ---------------------------------------------------------------------------
    # Hand-written (aiohttp, ~60 lines): vLLM's benchmark loop is not installed on a CPU host and GuideLLM
    # pulls torch/datasets/sanic; llama-server's own /completion stream gives each chunk's token ids and the
    # final counts (tokens_predicted includes the EOS that ends an answer, as the other engines count it).
    async def _one(self, session, req: dict, ignore_eos: bool, t0: float) -> dict:
        body = {"prompt": req["prompt"], "n_predict": int(req["max_tokens"]), "temperature": 0.0, "stream": True,
                "stop": list(req.get("stop") or []), "cache_prompt": self.cache_prompt, "ignore_eos": ignore_eos,
                "return_tokens": True}
        sent = time.perf_counter()
        times, text, final = [], [], {}
        try:
            async with session.post(f"{self.base_url}/completion", json=body) as r:
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}: {(await r.text())[:300]}")
                async for raw in r.content:
                    line = raw.strip()
                    if not line.startswith(b"data: "):
                        continue
                    data = json.loads(line[6:])
                    now = time.perf_counter() - sent
                    n = len(data.get("tokens") or []) or (1 if data.get("content") else 0)
                    times += [now] * n
                    text.append(data.get("content") or "")
                    if data.get("stop"):
                        final = data
                        final["_t"] = now
                        break
        except Exception as e:  # noqa: BLE001 - one failed request is a record, not a failed level
            return {"index": req.get("index"), "source": req.get("source"), "ok": False, "prompt_tokens": 0,
                    "output_tokens": 0, "start": sent - t0, "ttft": 0.0, "e2el": 0.0, "itl": [], "capped": False,
                    "error": f"{type(e).__name__}: {e}"[:500]}
        predicted = int(final.get("tokens_predicted", len(times)))
        times = times[:predicted] + [final.get("_t", times[-1] if times else 0.0)] * max(0, predicted - len(times))
        g = Generation(token_times=times, prompt_tokens=int(final.get("tokens_evaluated", 0)), text="".join(text))
        rec = record(req, g, sent - t0)
        rec["cached_tokens"] = int((final.get("timings") or {}).get("cache_n", 0))
        return rec

    async def _level(self, requests: list[dict], concurrency: int | None, rate: float | None, burstiness: float,
                     ignore_eos: bool) -> tuple[list[dict], float]:
        import aiohttp

        sem = asyncio.Semaphore(concurrency or len(requests) or 1)
        rng = random.Random(0)
        timeout = aiohttp.ClientTimeout(total=float(self.options.get("request_timeout_s", 600)))
        # A connection per request (force_close): llama-server drops kept-alive connections without saying
        # so, and a request sent on one fails ("Can not write request body", "Server disconnected"): 28 of
        # 1,280 streamed requests at concurrency 2 with keep-alive, 0 of 1,280 without. On loopback the
        # extra connect is well under a millisecond, and each simulated user holds its own connection anyway.
        async with aiohttp.ClientSession(timeout=timeout, trust_env=False,
                                         connector=aiohttp.TCPConnector(limit=0, force_close=True)) as session:
            t0 = time.perf_counter()

            async def go(req):
                async with sem:
                    return await self._one(session, req, ignore_eos, t0)

            tasks = []
            for req in requests:
                tasks.append(asyncio.create_task(go(req)))
                if rate:   # open loop: gamma inter-arrival times (Poisson at burstiness 1), as vllm bench serve
                    await asyncio.sleep(rng.gammavariate(burstiness, 1.0 / (rate * burstiness)))
            records = await asyncio.gather(*tasks)
            return list(records), time.perf_counter() - t0

    def _metrics(self) -> dict[str, float]:
        with contextlib.suppress(OSError, ValueError):
            return prometheus(_get(f"{self.base_url}/metrics"))
        return {}

    def run_requests(self, requests: list[dict], concurrency: int | None, rate: float | None = None,
                     burstiness: float = 1.0, ignore_eos: bool = False, warmup: int = 0) -> tuple[list[dict], float, dict]:
        """One load level against llama-server's streaming /completion: greedy, each request with its cap
        and stop sequences; closed loop at `concurrency`, or gamma/Poisson arrivals at `rate`."""
        if warmup:
            asyncio.run(self._level(requests[:warmup], concurrency or 1, None, 1.0, ignore_eos))
        before = self._metrics()
        records, duration = asyncio.run(self._level(requests, concurrency, rate, burstiness, ignore_eos))
        after = self._metrics()
        extras = {short: after[k] - before.get(k, 0.0) for k, short in SPEC_METRICS.items() if k in after}
        if self.variant.speculative["method"] == "none":
            extras = {k: v for k, v in extras.items() if not k.startswith("spec_decode")}
        return records, duration, extras

    # --- quality ----------------------------------------------------------------------------------------
    def lm_eval_model(self):
        from lm_eval.models.openai_completions import LocalCompletionsAPI

        from evalgate.models import resolve_model

        cache_prompt = self.cache_prompt

        class LlamaServerLM(LocalCompletionsAPI):
            """lm-eval's local-completions against llama-server; prompts go as token ids of the model's own
            HF tokenizer (the same inputs as on the other engines), with the variant's cache_prompt."""

            def _create_payload(self, messages, generate=False, gen_kwargs=None, seed=1234, eos=None, **kwargs):
                payload = super()._create_payload(messages, generate=generate, gen_kwargs=gen_kwargs, seed=seed,
                                                  eos=eos, **kwargs)
                payload["cache_prompt"] = cache_prompt
                return payload

            def loglikelihood(self, requests, **kwargs):
                raise NotImplementedError(f"engine llamacpp: {NO_PROMPT_LOGPROBS}")

            def loglikelihood_rolling(self, requests, **kwargs):
                raise NotImplementedError(f"engine llamacpp: {NO_PROMPT_LOGPROBS}")

        return LlamaServerLM(base_url=f"{self.base_url}/v1/completions", model="model",
                             tokenizer=resolve_model(self.model), tokenizer_backend="huggingface",
                             num_concurrent=int(self.options.get("eval_concurrency", 4)), batch_size=1,
                             max_retries=3, timeout=600, max_length=int(self.options.get("max_length", 2048)))

    def _tool(self, name: str) -> str:
        from evalgate import gguf

        return gguf.tools(self.options, build=False)[name]

    def reference_fidelity(self, texts: list[str], baseline, out) -> dict[str, float] | None:
        """llama-perplexity's KL-divergence mode on the reference texts. The baseline saves its logits
        (`--kl-divergence-base`, fidelity.kld); a variant is scored against them (`--kl-divergence`): KL
        over the whole vocabulary, same-top-token share, PPL ratio, run with the variant's KV/FA flags."""
        fid = self.options.get("fidelity") or {}
        ctx = int(fid.get("ctx_size", 128))
        cmd = [self._tool("llama-perplexity"), "--model", str(self.model.gguf), "--ctx-size", str(ctx),
               "--batch-size", str(ctx), *model_flags(self.variant, self.options)]
        if fid.get("chunks"):
            cmd += ["--chunks", str(int(fid["chunks"]))]
        if baseline is None:
            ref = out.file("fidelity_ref.txt")
            ref.write_text("\n".join(texts) + "\n")
            cmd += ["--file", str(ref), "--kl-divergence-base", str(out.file("fidelity.kld"))]
        else:
            cmd += ["--kl-divergence-base", str(baseline.file("fidelity.kld")), "--kl-divergence"]
        # llama-perplexity's asynchronous logger sometimes drops the last lines at exit (its summary; exit code
        # 0 all the same: 2 of 6 runs here, 2026-11-25), so a run without the summary is repeated
        for _ in range(int(fid.get("attempts", 8))):
            p = subprocess.run(cmd, capture_output=True, text=True)
            out.file("fidelity.log").write_text(" ".join(cmd) + "\n" + p.stdout + p.stderr)
            if p.returncode:
                last = [ln for ln in (p.stdout + p.stderr).strip().splitlines() if ln.strip()][-1:] or ["no output"]
                raise RuntimeError(f"llama-perplexity failed ({p.returncode}): {last[0][:300]}")
            if baseline is None and out.file("fidelity.kld").exists():
                return {}
            stats = perplexity_stats(p.stdout + p.stderr)
            if "top1_agreement" in stats:   # the summary's last line: all of it arrived
                break
        if baseline is None or "top1_agreement" not in stats:
            raise RuntimeError(f"llama-perplexity wrote no {'logits' if baseline is None else 'KL statistics'} "
                               f"(too few tokens? ≥ 2 × fidelity.ctx_size and ≥ 100 scored): see {out.file('fidelity.log')}")
        return {f"fidelity/{k}": v for k, v in stats.items()}

    def engine_bench(self) -> dict[str, float]:
        """llama-bench on the served GGUF with the variant's KV/FA flags: prompt processing and token
        generation speed without HTTP, sampling or scheduling (what a llama.cpp user quotes)."""
        b = self.options.get("llama_bench") or {}
        if not b.get("enabled", True):
            return {}
        pp, tg = int(b.get("n_prompt", 128)), int(b.get("n_gen", 128))
        cmd = [self._tool("llama-bench"), "-m", str(self.model.gguf), "-p", str(pp), "-n", str(tg),
               "-r", str(int(b.get("repetitions", 5))), "-o", "json"]
        flags = model_flags(self.variant, self.options)
        for long, short in (("--flash-attn", "-fa"), ("--cache-type-k", "-ctk"), ("--cache-type-v", "-ctv")):
            if long in flags:
                cmd += [short, flags[flags.index(long) + 1]]
        p = subprocess.run(cmd, capture_output=True, text=True)
        with open(self.log_path.with_name("llama_bench.log"), "w") as f:
            f.write(" ".join(cmd) + "\n" + p.stdout + p.stderr)
        if p.returncode:
            return {}
        out = {}
        for row in json.loads(p.stdout or "[]"):   # one row per test: pp<n_prompt>, tg<n_gen>
            if row.get("n_gen"):
                out.update({"llama_bench/tg_tok_s": row["avg_ts"], "llama_bench/tg_tok_s_std": row.get("stddev_ts", 0.0),
                            "llama_bench/tg_ms_per_token": 1000.0 / row["avg_ts"]})
            elif row.get("n_prompt"):
                out["llama_bench/pp_tok_s"] = row["avg_ts"]
        return out

    def stats(self) -> dict[str, float]:
        out = dict(self.info.metrics)
        log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        out.update(log_facts(log))
        if self.model.gguf and Path(self.model.gguf).exists():
            out["disk_model_mb"] = Path(self.model.gguf).stat().st_size / 2**20
            with contextlib.suppress(Exception):   # the weights as stored (K-quants fall back on narrow rows)
                from evalgate import gguf

                out["gguf_bits_per_weight"] = gguf.tensor_types(Path(self.model.gguf),
                                                                gguf.tools(self.options, build=False))["bits_per_weight"]
        with contextlib.suppress(OSError, TypeError):
            status = Path(f"/proc/{self.pid}/status").read_text()
            if m := re.search(r"VmHWM:\s*(\d+) kB", status):   # the server's peak resident memory
                out["mem_peak_mb"] = int(m.group(1)) / 1024
        return out


@dataclasses.dataclass
class LlamaCppServer:
    """A started llama-server (its own process group) that may not be healthy yet."""
    proc: subprocess.Popen
    base_url: str
    model: ModelSpec
    variant: Variant
    log_path: Path
    options: dict
    t0: float
    start_seconds: float | None = None

    def wait(self, timeout: float | None = None) -> LlamaCppEndpoint:
        """Block until /health says ok; a clear error if llama-server died or the time ran out."""
        timeout = float(timeout or self.options.get("start_timeout_s", 120))
        wait_healthy(self.proc, self.log_path,
                     lambda: json.loads(_get(f"{self.base_url}/health", timeout=2)).get("status") == "ok",
                     timeout, "llama-server", poll_s=0.1)
        self.start_seconds = time.perf_counter() - self.t0
        return self.endpoint()

    def endpoint(self) -> LlamaCppEndpoint:
        info = ServeInfo(start_seconds=self.start_seconds or 0.0, artifacts=[self.log_path])
        return LlamaCppEndpoint(self.base_url, self.model, self.variant, self.log_path, info, self.options, self.proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def hold(self, stopped: bool) -> None:
        hold_process_group(self.proc, stopped)

    def stop(self) -> None:
        stop_process_group(self.proc, grace_s=10)


class LlamaCppEngine(Engine):
    name = "llamacpp"
    # One server at a time: on a 2-core CPU, servers side by side would share the cores their quality
    # phases and profiles need; the scheduler runs llamacpp variants serially (runner.run_serial).
    attachable = False
    skipped_output_types = SKIPPED_OUTPUT_TYPES

    def preflight(self) -> None:
        import importlib.util

        if importlib.util.find_spec("aiohttp") is None:
            raise ConfigError("engine.name: 'llamacpp' needs aiohttp (pip install -r requirements.txt)")

    def export_model(self, model: ModelSpec, out: Path) -> dict:
        """GGUF F16 of the model and its draft, by llama.cpp's converter, with an Ollama Modelfile."""
        from evalgate import gguf

        return gguf.export(model, self.options, out)

    def _help(self) -> str | None:
        """`llama-server --help` of the built binary (None before the build: flags unchecked then)."""
        from evalgate import gguf

        if not hasattr(self, "_help_text"):
            try:
                tl = gguf.tools(self.options, build=False)
                p = subprocess.run([tl["llama-server"], "--help"], capture_output=True, text=True, timeout=30)
                self._help_text = p.stdout + p.stderr
            except (gguf.ToolsMissing, OSError, subprocess.SubprocessError):
                self._help_text = None
        return self._help_text

    def check(self, model: ModelSpec, variant: Variant) -> None:
        v, where = variant, "engine llamacpp"
        method = v.quantization["method"]
        if method not in ("none", *GGUF_TYPES):
            raise VariantUnsupported(f"{where}: quantization.method {method!r} is not a GGUF type "
                                     f"(supported: {', '.join(GGUF_TYPES)})")
        for field in ("dtype", "v_dtype"):
            if field in v.kv_cache and v.kv_cache[field] not in KV:
                raise VariantUnsupported(f"{where}: kv_cache.{field} {v.kv_cache[field]!r} is not a llama.cpp cache "
                                         f"type (supported: {', '.join(KV)})")
        if v.dtype not in (None, "auto", "float16"):
            raise VariantUnsupported(f"{where}: dtype {v.dtype!r}: the served weights are the f16 GGUF or a GGUF "
                                     "type (quantization.method)")
        fa = {True: "on", False: "off"}.get(_engine_args(v, self.options).get("flash_attn", "auto"),
                                            _engine_args(v, self.options).get("flash_attn", "auto"))
        if fa not in ("on", "off", "auto"):
            raise VariantUnsupported(f"{where}: engine_args.flash_attn {fa!r} is not one of on, off, auto")
        _, vt = kv_types(v)
        if fa == "off" and vt and vt not in UNQUANTIZED_KV:
            raise VariantUnsupported(f"{where}: a quantized V cache ({vt}) needs flash attention, and "
                                     "engine_args.flash_attn is off")
        head = head_dim(model)
        for kind, t in zip("KV", kv_types(v)):
            if t and t not in UNQUANTIZED_KV and head and head % 32:
                raise VariantUnsupported(f"{where}: a {t} {kind} cache quantizes blocks of 32 values of one attention "
                                         f"head, and this model's heads have {head} (llama.cpp refuses it)")
        if v.speculative["method"] == "draft" and not model.draft_gguf:
            raise VariantUnsupported(f"{where}: speculative.method 'draft' needs model.draft (converted to GGUF "
                                     "by the gguf stage)")
        if not model.gguf:
            raise VariantUnsupported(f"{where}: no GGUF to serve: the gguf stage converts the model "
                                     "(run@ gets it with --gguf)")
        help_text = self._help()
        if help_text is not None:
            for k, val in _engine_args(v, self.options).items():
                flag = _flag(k, val)[0]
                if k not in REQUEST_FIELDS and k != "flash_attn" and not re.search(rf"(^|[\s,]){re.escape(flag)}([\s,=]|$)",
                                                                                  help_text, re.M):
                    raise VariantUnsupported(f"{where}: engine_args.{k} ({flag}) is not a llama-server flag")

    def start(self, model: ModelSpec, variant: Variant, workdir: Path, memory: dict | None = None) -> LlamaCppServer:
        """Launch llama-server (own process group) on a free loopback port and return at once."""
        from evalgate import gguf

        tl = gguf.tools(self.options, build=False)
        port = _free_port()
        cmd = [tl["llama-server"], *server_args(model.gguf, model.draft_gguf, variant, self.options),
               "--host", "127.0.0.1", "--port", str(port)]
        (workdir / "server_cmd.json").write_text(json.dumps(cmd, indent=1))
        log_path = workdir / "server.log"
        t0 = time.perf_counter()
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        (workdir / "server.pid").write_text(str(proc.pid))
        return LlamaCppServer(proc, f"http://127.0.0.1:{port}", model, variant, log_path, self.options, t0)

    def attach(self, rec: dict) -> LlamaCppEndpoint:
        return LlamaCppEndpoint.attach(rec)

    @contextlib.contextmanager
    def serve(self, model: ModelSpec, variant: Variant, workdir: Path):
        server = self.start(model, variant, workdir)
        try:
            with _no_proxy():
                yield server.wait()
        finally:
            server.stop()
