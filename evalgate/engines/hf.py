"""`hf` engine: transformers in this process (the CPU default).

Variant mapping (engine-neutral field → transformers), the only place these flags are known:
  dtype                      → `from_pretrained(dtype=…)`
  quantization.method        → weight quantization, by backend (`quantization.backend` picks another):
      int8         torchao Int8WeightOnlyConfig           (or quanto qint8, bitsandbytes 8-bit)
      int8_dynamic torchao Int8DynamicActivationInt8WeightConfig
      int4         torchao IntxWeightOnlyConfig(int4, per-group) (or quanto qint4)
      int2         quanto qint2
      nf4          bitsandbytes 4-bit NF4
      w4a16, w8a8  the compressed-tensors checkpoint written by quantize@<variant> (decompressed on load)
      checkpoint   a pre-quantized checkpoint (`quantization.path`: GPTQ, AWQ, compressed-tensors…)
  kv_cache.dtype             → transformers' quantized cache: int4/int2 (quanto or hqq backend), fp8
  speculative.method=ngram   → prompt-lookup decoding (`prompt_lookup_num_tokens`)
  speculative.method=draft   → assisted generation with `model.draft` (`assistant_model`)
  engine_args                → attn_implementation, cache_implementation, batch_size (profile batch),
                               eval_batch_size (lm-eval batch), max_model_len (lm-eval context)
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import resource
import time
from pathlib import Path

from evalgate.config import ModelSpec, Variant
from evalgate.engines.base import Endpoint, Engine, Generation, ServeInfo, VariantUnsupported
from evalgate.models import resolve_model

ENGINE_ARGS = {"attn_implementation": ("eager", "sdpa"), "cache_implementation": ("dynamic", "static"),
               "batch_size": int, "eval_batch_size": int, "max_model_len": int}
# (method, backend) → the library it needs; the first backend listed for a method is its default
QUANT_BACKENDS = {
    ("int8", "torchao"): "torchao", ("int8", "quanto"): "optimum.quanto", ("int8", "bitsandbytes"): "bitsandbytes",
    ("int8_dynamic", "torchao"): "torchao",
    ("int4", "torchao"): "torchao", ("int4", "quanto"): "optimum.quanto",
    ("int2", "quanto"): "optimum.quanto",
    ("nf4", "bitsandbytes"): "bitsandbytes",
    ("w4a16", "compressed-tensors"): "compressed_tensors", ("w8a8", "compressed-tensors"): "compressed_tensors",
    ("checkpoint", "auto"): None,
}
PREQUANTIZED = ("w4a16", "w8a8", "checkpoint")   # the model folder itself carries the quantization
KV_BACKENDS = {("int4", "quanto"): "optimum.quanto", ("int4", "hqq"): "hqq", ("int2", "quanto"): "optimum.quanto",
               ("int2", "hqq"): "hqq", ("fp8", "fp8"): None}


def _default_backend(table: dict, method: str) -> str | None:
    return next((b for m, b in table if m == method), None)


def _need_library(module: str | None, what: str) -> None:
    if module is None:
        return
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package (optimum of optimum.quanto) is missing
        found = False
    if not found:
        raise VariantUnsupported(f"engine hf: {what} needs the {module.split('.')[-1]!r} library "
                                 f"(pip install {module.replace('.', '-')})")


def _check_backend(table: dict, field: str, method: str, backend: str | None) -> None:
    """Refuse a (method, backend) pair this adapter does not map, or whose library is missing."""
    backend = backend or _default_backend(table, method)
    if (method, backend) not in table:
        raise VariantUnsupported(f"engine hf: {field} {method!r} with backend {backend!r} is not supported "
                                 f"(supported: {sorted(table)})")
    _need_library(table[(method, backend)], f"{field.split('.')[0]} {method}/{backend}")


def _linear_inputs(model: ModelSpec) -> set[int]:
    """The input widths of the model's linear layers (hidden and MLP sizes) from its config.json, without
    loading it (a hub model not downloaded yet: none known)."""
    cfg = Path(model.id) / "config.json"
    if not cfg.is_file():
        return set()
    c = json.loads(cfg.read_text())
    return {int(c[k]) for k in ("hidden_size", "intermediate_size") if isinstance(c.get(k), int)}


def _torch_dtype(name: str | None):
    import torch

    return "auto" if name in (None, "auto") else getattr(torch, name)


class _TimingStreamer:
    """transformers streamer that timestamps each generation step (the first `put` is the prompt).

    Every sequence of a batch gets a token per step, so one list of times serves the whole batch."""

    def __init__(self, t0: float):
        self.t0, self.times, self._prompt_seen = t0, [], False

    def put(self, value):
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        now = time.perf_counter() - self.t0
        # decode steps put one token per sequence ([batch]); assisted decoding puts [1, accepted + 1]
        per_seq = value.shape[-1] if value.dim() > 1 else 1
        self.times.extend([now] * per_seq)

    def end(self):
        pass


def _quantize_kwargs(variant: Variant) -> tuple[dict, object]:
    """from_pretrained kwargs and/or a post-load function for the variant's weight quantization."""
    import torch

    q = variant.quantization
    method, backend = q["method"], q.get("backend") or _default_backend(QUANT_BACKENDS, q["method"])
    if method == "none" or method in PREQUANTIZED:
        return {}, None
    if backend == "torchao":
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            IntxWeightOnlyConfig,
            PerGroup,
        )
        from transformers import TorchAoConfig

        cfg = {"int8": lambda: Int8WeightOnlyConfig(),
               "int8_dynamic": lambda: Int8DynamicActivationInt8WeightConfig(),
               "int4": lambda: IntxWeightOnlyConfig(weight_dtype=torch.int4,
                                                    granularity=PerGroup(q.get("group_size", 32)))}[method]()
        return {"quantization_config": TorchAoConfig(cfg)}, None
    if backend == "bitsandbytes":
        from transformers import BitsAndBytesConfig

        bnb = BitsAndBytesConfig(load_in_8bit=True) if method == "int8" else BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4")
        return {"quantization_config": bnb}, None
    # quanto: quantize the loaded model in place (its int4/int2 tensors reject inference_mode, hence no_grad)

    def quanto(model):
        from optimum import quanto as oq

        oq.quantize(model, weights={"int8": oq.qint8, "int4": oq.qint4, "int2": oq.qint2}[method])
        oq.freeze(model)
        return model

    return {}, quanto


def _kv_generate_kwargs(variant: Variant) -> dict:
    kv = variant.kv_cache
    if kv["dtype"] == "auto":
        return {}
    backend = kv.get("backend") or _default_backend(KV_BACKENDS, kv["dtype"])
    if backend == "fp8":
        return {"cache_implementation": "quantized", "cache_config": {"backend": "fp8"}}
    # residual_length: recent tokens kept unquantized (KIVI); transformers' default 128 exceeds the
    # fixture's sequences and would quantize nothing, so it is set from the variant (default 0)
    return {"cache_implementation": "quantized",
            "cache_config": {"backend": backend, "nbits": int(kv["dtype"][3:]),
                             "q_group_size": kv.get("group_size", 32), "residual_length": kv.get("residual_length", 0)}}


def _nbytes(t) -> int:
    """Bytes a tensor really holds: a quantized tensor subclass (torchao's Int8Tensor, quanto's
    QBitsTensor…) counts its inner data and scales, not the float shape it presents."""
    if hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(_nbytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def weight_bytes(model) -> int:
    """The model's parameters and buffers as stored (transformers' get_memory_footprint counts a
    quantized weight at its float size, so int8 and fp32 looked the same)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += _nbytes(t)
    return total


def _row_length(ids: list[int], tok, stops: list[str] | None, cap: int) -> int:
    """Tokens a request produced in a static batch: up to and including its EOS, or up to the end of
    its first stop string, and never beyond its own cap (the batch ran to the longest request's)."""
    n = min(cap, len(ids))
    if stops is None:
        return n
    for j in range(n):
        if ids[j] == tok.eos_token_id:
            return j + 1
    if any(stops):
        text = ""
        for j in range(n):
            text += tok.decode([ids[j]])
            if any(s and s in text for s in stops):
                return j + 1
    return n


class HFEndpoint(Endpoint):
    def __init__(self, model, tokenizer, gen_kwargs: dict, args: dict, start_s: float, disk_mb: float):
        self.model, self.tok, self.gen_kwargs, self.args = model, tokenizer, gen_kwargs, args
        self.batch_size = int(args.get("batch_size", 1))
        self._speculative = any(k in gen_kwargs for k in ("prompt_lookup_num_tokens", "assistant_model"))
        self.info = ServeInfo(start_seconds=start_s)
        self._forwards = self._new_tokens = self._decode_forwards = 0
        self._mark = (0, 0)
        model.register_forward_hook(self._count)  # target forward passes → speculative acceptance length
        self.info.metrics.update({"mem_weights_mb": weight_bytes(model) / 2**20, "disk_model_mb": disk_mb})

    def _count(self, *_):
        self._forwards += 1

    def generate_batch(self, requests: list[dict], ignore_eos: bool = False) -> list[Generation]:
        """One static batch, left-padded, greedy. Each request ends at EOS, at one of its stop strings
        or at its own `max_tokens` (a row that finished waits for the batch, as in static batching);
        `ignore_eos` forces every row to its cap. Token times are per generation step of the batch."""
        import torch

        if len(requests) > 1 and self._speculative:  # transformers speculates on one sequence at a time
            return [self.generate_batch([r], ignore_eos)[0] for r in requests]
        self.tok.padding_side = "left"
        enc = self.tok([r["prompt"] for r in requests], return_tensors="pt", padding=True).to(self.model.device)
        cap = max(int(r["max_tokens"]) for r in requests)
        stops = sorted({s for r in requests for s in r.get("stop", []) if s})
        kw = {"min_new_tokens": cap} if ignore_eos else (
            {"stop_strings": stops, "tokenizer": self.tok} if stops else {})
        before = self._forwards
        t0 = time.perf_counter()
        streamer = _TimingStreamer(t0)
        with torch.no_grad():
            seq = self.model.generate(**enc, max_new_tokens=cap, do_sample=False, streamer=streamer,
                                      pad_token_id=self.tok.pad_token_id, **kw, **self.gen_kwargs)
        self._decode_forwards += self._forwards - before - 1   # minus the prefill
        self._new_tokens += len(streamer.times) - 1            # the first token comes from the prefill
        width = enc.input_ids.shape[1]
        out = []
        for i, r in enumerate(requests):
            ids = seq[i, width:].tolist()
            n = _row_length(ids, self.tok, None if ignore_eos else r.get("stop"), int(r["max_tokens"]))
            out.append(Generation(token_times=list(streamer.times[:n]), token_ids=ids[:n],
                                  prompt_tokens=int(enc.attention_mask[i].sum()),
                                  text=self.tok.decode(ids[:n], skip_special_tokens=True)))
        return out

    def level_extras(self) -> dict:
        """Tokens generated and target decode steps since the last call: their ratio is speculation's
        mean accepted length (transformers does not expose proposed-token counts, so no rate)."""
        new, steps = self._new_tokens - self._mark[0], self._decode_forwards - self._mark[1]
        self._mark = (self._new_tokens, self._decode_forwards)
        return {"spec_decode_new_tokens": new, "spec_decode_target_steps": steps} if self._speculative else {}

    def prompt_logprobs(self, texts: list[str], top_k: int) -> list[dict]:
        """Full next-token distributions in-process; `top_k` ≥ vocabulary keeps all of it."""
        import torch

        out = []
        k = min(top_k, self.model.config.vocab_size)
        with torch.no_grad():
            for text in texts:
                ids = self.tok(text, return_tensors="pt").input_ids.to(self.model.device)
                logp = torch.log_softmax(self.model(ids).logits[0, :-1].float(), -1)
                top = logp.topk(k, -1)
                out.append({"ids": ids[0].tolist(), "top_ids": top.indices.cpu().numpy(),
                            "top_logprobs": top.values.cpu().numpy(), "vocab_size": logp.shape[-1]})
        return out

    def stats(self) -> dict[str, float]:
        out = dict(self.info.metrics)
        out["mem_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return out

    def lm_eval_model(self):
        from lm_eval.models.huggingface import HFLM

        gen_kwargs, speculative = self.gen_kwargs, self._speculative

        class VariantHFLM(HFLM):
            """HFLM that adds this variant's generate() arguments (speculation, KV cache) to every request.

            transformers speculates on one sequence at a time, so a speculative batch is generated row
            by row (padding stripped, then re-padded); loglikelihood requests keep their batches."""

            def _model_generate(self, context, max_length, stop, **kw):
                if not speculative or context.shape[0] == 1:
                    return super()._model_generate(context, max_length, stop, **{**kw, **gen_kwargs})
                import torch

                mask, width, rows = kw.pop("attention_mask"), context.shape[1], []
                for i in range(context.shape[0]):
                    keep = mask[i].bool()
                    ctx = context[i:i + 1, keep]
                    out = super()._model_generate(ctx, max_length - (width - ctx.shape[1]), stop,
                                                  attention_mask=mask[i:i + 1, keep], **{**kw, **gen_kwargs})
                    rows.append(torch.cat([context[i], out[0, ctx.shape[1]:]]))
                longest = max(len(r) for r in rows)
                pad = self.tokenizer.pad_token_id
                return torch.stack([torch.nn.functional.pad(r, (0, longest - len(r)), value=pad) for r in rows])

        bs = int(self.args.get("eval_batch_size", 32))
        extra = {"max_length": int(self.args["max_model_len"])} if "max_model_len" in self.args else {}
        return VariantHFLM(pretrained=self.model, tokenizer=self.tok, batch_size=bs,
                           device=str(self.model.device), **extra)


class HFEngine(Engine):
    name = "hf"

    def side_by_side(self) -> int:
        """On the CPU: `side_by_side` (auto: the cores this process may use, one thread each; see
        evalgate.lanes for why one thread loses nothing here). On a GPU one model computes at a time."""
        if not str(self.options.get("device", "cpu")).startswith("cpu"):
            return 1
        from evalgate.lanes import usable_cores

        n = self.options.get("side_by_side", "auto")
        return usable_cores() if n == "auto" else int(n)

    def use_threads(self, n: int) -> None:
        import torch

        torch.set_num_threads(n)

    def check(self, model: ModelSpec, variant: Variant) -> None:
        v = variant
        if v.quantization["method"] != "none":
            _check_backend(QUANT_BACKENDS, "quantization.method", v.quantization["method"], v.quantization.get("backend"))
        if v.kv_cache["dtype"] != "auto":
            _check_backend(KV_BACKENDS, "kv_cache.dtype", v.kv_cache["dtype"], v.kv_cache.get("backend"))
        if v.speculative["method"] == "draft" and not model.draft:
            raise VariantUnsupported("engine hf: speculative.method 'draft' needs model.draft")
        group = v.quantization.get("group_size")
        if group and v.quantization["method"] == "int4":
            widths = _linear_inputs(model)
            bad = sorted(w for w in widths if w % group)
            if bad:
                raise VariantUnsupported(f"engine hf: quantization.group_size {group} must divide every linear layer's "
                                         f"input width ({', '.join(map(str, sorted(widths)))}); {bad[0]} is not a multiple")
        if v.speculative["method"] != "none" and int(v.engine_args.get("batch_size", 1)) > 1:
            raise VariantUnsupported("engine hf: speculative decoding runs one sequence at a time (batch_size 1)")
        for k, val in v.engine_args.items():
            allowed = ENGINE_ARGS.get(k)
            if allowed is None:
                raise VariantUnsupported(f"engine hf: engine_args.{k} is unknown (known: {', '.join(ENGINE_ARGS)})")
            if allowed is int and not (isinstance(val, int) and val >= 1):
                raise VariantUnsupported(f"engine hf: engine_args.{k} must be an integer ≥ 1, got {val!r}")
            if isinstance(allowed, tuple) and val not in allowed:
                raise VariantUnsupported(f"engine hf: engine_args.{k}={val!r} is not one of {allowed}")

    def _load(self, path: str, dtype, attn: str | None, load_kwargs: dict | None = None, post=None):
        from transformers import AutoModelForCausalLM

        kw = {"attn_implementation": attn} if attn else {}
        m = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw, **(load_kwargs or {}))
        if not (load_kwargs or {}).get("quantization_config"):  # quantized loads place themselves
            m = m.to(self.options.get("device", "cpu"))
        m = m.eval().requires_grad_(False)
        return post(m) if post else m

    @contextlib.contextmanager
    def serve(self, model: ModelSpec, variant: Variant, workdir: Path):
        from transformers import AutoTokenizer

        t0 = time.perf_counter()
        path = resolve_model(model)
        dtype = _torch_dtype(variant.dtype or model.dtype)
        attn = variant.engine_args.get("attn_implementation")
        tok = AutoTokenizer.from_pretrained(path)
        if variant.quantization["method"] in PREQUANTIZED and "quantization_config" not in json.loads(
                (Path(path) / "config.json").read_text()):
            raise RuntimeError(f"quantization.method {variant.quantization['method']!r}: {path} is not a "
                               "quantized checkpoint (no quantization_config in its config.json)")
        load_kwargs, post = _quantize_kwargs(variant)
        m = self._load(path, dtype, attn, load_kwargs, post)
        gen_kwargs: dict = _kv_generate_kwargs(variant)
        if "cache_implementation" in variant.engine_args:
            gen_kwargs.setdefault("cache_implementation", variant.engine_args["cache_implementation"])
        sp = variant.speculative
        if sp["method"] == "ngram":
            gen_kwargs["prompt_lookup_num_tokens"] = sp["num_tokens"]
        elif sp["method"] == "draft":
            draft = self._load(resolve_model(model, "draft"), dtype, attn)
            draft.generation_config.num_assistant_tokens = sp["num_tokens"]
            draft.generation_config.num_assistant_tokens_schedule = "constant"
            gen_kwargs["assistant_model"] = draft
        disk = sum(f.stat().st_size for f in Path(path).glob("*.safetensors")) / 2**20
        args = {"eval_batch_size": self.options.get("eval_batch_size", 32), **variant.engine_args}
        ep = HFEndpoint(m, tok, gen_kwargs, args, time.perf_counter() - t0, disk)
        try:
            yield ep
        finally:
            del ep, m, gen_kwargs
