"""`hf` engine: transformers in this process (the CPU default).

Variant mapping (engine-neutral field → transformers):
  dtype                    → `from_pretrained(dtype=…)`
  speculative.method=ngram → prompt-lookup decoding (`prompt_lookup_num_tokens`)
  speculative.method=draft → assisted generation with the model's draft (`assistant_model`)
  engine_args              → attn_implementation, eval_batch_size
Quantization and KV-cache methods are refused here until this adapter implements them.
"""
from __future__ import annotations

import contextlib
import resource
import time
from pathlib import Path

from evalgate.config import ModelSpec, Variant
from evalgate.engines.base import Endpoint, Engine, Generation, ServeInfo, VariantUnsupported
from evalgate.models import resolve_model

ENGINE_ARGS = {"attn_implementation": ("eager", "sdpa"), "eval_batch_size": None}


def _torch_dtype(name: str | None):
    import torch

    return "auto" if name in (None, "auto") else getattr(torch, name)


class _TimingStreamer:
    """transformers streamer that timestamps each arriving token (the first `put` is the prompt)."""

    def __init__(self, t0: float):
        self.t0, self.times, self._prompt_seen = t0, [], False

    def put(self, value):
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        now = time.perf_counter() - self.t0
        self.times.extend([now] * int(value.numel()))

    def end(self):
        pass


class HFEndpoint(Endpoint):
    def __init__(self, model, tokenizer, gen_kwargs: dict, eval_batch_size: int, start_s: float, disk_mb: float):
        self.model, self.tok, self.gen_kwargs, self.eval_batch_size = model, tokenizer, gen_kwargs, eval_batch_size
        self.info = ServeInfo(start_seconds=start_s)
        self._forwards = 0
        model.register_forward_hook(self._count)  # target forward passes → speculative acceptance length
        self._new_tokens = 0
        self._decode_forwards = 0
        self.info.metrics.update({"mem_weights_mb": model.get_memory_footprint() / 2**20, "disk_model_mb": disk_mb})

    def _count(self, *_):
        self._forwards += 1

    def generate(self, prompt: str, output_len: int) -> Generation:
        import torch

        ids = self.tok(prompt, return_tensors="pt").input_ids.to(self.model.device)
        before = self._forwards
        t0 = time.perf_counter()
        streamer = _TimingStreamer(t0)
        with torch.inference_mode():
            seq = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=output_len,
                                min_new_tokens=output_len, do_sample=False, streamer=streamer,
                                pad_token_id=self.tok.pad_token_id, **self.gen_kwargs)
        self._decode_forwards += self._forwards - before - 1   # minus the prefill
        self._new_tokens += len(streamer.times) - 1            # the first token comes from the prefill
        return Generation(token_times=streamer.times, token_ids=seq[0, ids.shape[1]:].tolist(),
                          prompt_tokens=ids.shape[1])

    def stats(self) -> dict[str, float]:
        out = dict(self.info.metrics)
        out["mem_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if self.gen_kwargs and self._decode_forwards:
            # tokens per target decode step: 1.0 without speculation; vLLM's "acceptance length"
            out["spec_decode_acceptance_length"] = self._new_tokens / self._decode_forwards
        return out

    def lm_eval_model(self):
        from lm_eval.models.huggingface import HFLM

        gen_kwargs = self.gen_kwargs

        class VariantHFLM(HFLM):
            """HFLM that adds this variant's generate() arguments (speculation) to every request."""

            def _model_generate(self, context, max_length, stop, **kw):
                return super()._model_generate(context, max_length, stop, **{**kw, **gen_kwargs})

        # transformers' assisted and prompt-lookup decoding accept one sequence at a time
        bs = 1 if gen_kwargs else self.eval_batch_size
        return VariantHFLM(pretrained=self.model, tokenizer=self.tok, batch_size=bs,
                           device=str(self.model.device))


class HFEngine(Engine):
    name = "hf"

    def check(self, model: ModelSpec, variant: Variant) -> None:
        v = variant
        if v.quantization["method"] != "none":
            raise VariantUnsupported(f"engine hf: quantization.method {v.quantization['method']!r} is not supported")
        if v.kv_cache["dtype"] != "auto":
            raise VariantUnsupported(f"engine hf: kv_cache.dtype {v.kv_cache['dtype']!r} is not supported")
        if v.speculative["method"] == "draft" and not model.draft:
            raise VariantUnsupported("engine hf: speculative.method 'draft' needs model.draft")
        for k, val in v.engine_args.items():
            if k not in ENGINE_ARGS:
                raise VariantUnsupported(f"engine hf: engine_args.{k} is unknown (known: {', '.join(ENGINE_ARGS)})")
            if ENGINE_ARGS[k] and val not in ENGINE_ARGS[k]:
                raise VariantUnsupported(f"engine hf: engine_args.{k}={val!r} is not one of {ENGINE_ARGS[k]}")

    def _load(self, path: str, dtype, attn: str | None):
        from transformers import AutoModelForCausalLM

        kw = {"attn_implementation": attn} if attn else {}
        m = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw)
        return m.to(self.options.get("device", "cpu")).eval().requires_grad_(False)

    @contextlib.contextmanager
    def serve(self, model: ModelSpec, variant: Variant, workdir: Path):
        from transformers import AutoTokenizer

        t0 = time.perf_counter()
        path = resolve_model(model)
        dtype = _torch_dtype(variant.dtype or model.dtype)
        attn = variant.engine_args.get("attn_implementation")
        tok = AutoTokenizer.from_pretrained(path)
        m = self._load(path, dtype, attn)
        gen_kwargs: dict = {}
        sp = variant.speculative
        if sp["method"] == "ngram":
            gen_kwargs["prompt_lookup_num_tokens"] = sp["num_tokens"]
        elif sp["method"] == "draft":
            draft = self._load(resolve_model(model, "draft"), dtype, attn)
            draft.generation_config.num_assistant_tokens = sp["num_tokens"]
            draft.generation_config.num_assistant_tokens_schedule = "constant"
            gen_kwargs["assistant_model"] = draft
        disk = sum(f.stat().st_size for f in Path(path).glob("*.safetensors")) / 2**20
        bs = int(variant.engine_args.get("eval_batch_size", self.options.get("eval_batch_size", 32)))
        ep = HFEndpoint(m, tok, gen_kwargs, bs, time.perf_counter() - t0, disk)
        try:
            yield ep
        finally:
            del ep, m, gen_kwargs
