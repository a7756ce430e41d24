"""The hf adapter on a tiny random Llama: variant mapping, refusals, timing, lossless speculation."""
import pytest

from evalgate.config import ModelSpec, parse_variant
from evalgate.engines import get_engine
from evalgate.engines.base import VariantUnsupported
from evalgate.engines.hf import _row_length
from evalgate.profile import sweep


def req(prompt, n, stop=()):
    return {"index": 0, "source": "t", "prompt": prompt, "max_tokens": n, "stop": list(stop)}


@pytest.fixture(scope="module")
def engine():
    return get_engine("hf", {"device": "cpu", "eval_batch_size": 4})


@pytest.mark.parametrize("spec, msg", [
    ({"quantization": {"method": "fp8"}}, "quantization.method"),
    ({"engine_args": {"max_num_seqs": 8}}, "engine_args.max_num_seqs"),
    ({"engine_args": {"attn_implementation": "flash"}}, "attn_implementation"),
    # the tiny model's layers are 32 and 64 wide: a group of 48 divides neither (before: a cryptic error at load)
    ({"quantization": {"method": "int4", "group_size": 48}}, r"group_size 48 must divide .*\(32, 64\); 32"),
])
def test_check_refuses_what_it_cannot_run(engine, tiny, spec, msg):
    with pytest.raises(VariantUnsupported, match=msg):
        engine.check(tiny, parse_variant("v", spec))


def test_draft_needs_a_draft_model(engine, tiny):
    no_draft = ModelSpec(source="local", id=tiny.id)
    with pytest.raises(VariantUnsupported, match="model.draft"):
        engine.check(no_draft, parse_variant("v", {"speculative": {"method": "draft"}}))


def test_profile_sweeps_the_levels_with_forced_length(engine, tiny, tmp_path):
    reqs = [dict(req(p, 6), index=i) for i, p in enumerate(["1+2=", "the cat", "3+4=", "the mat"] * 4)]
    load = {"concurrency": [1, 2], "requests": {"min": 4, "max": 8}, "warmup": 1, "target_ci_pct": 50, "waves": 2,
            "saturation_gain_pct": 0}
    with engine.serve(tiny, parse_variant("baseline", {}), tmp_path) as ep:
        g = ep.generate_batch([req("1+2=", 12)], ignore_eos=True)[0]
        prof = sweep(ep, reqs, load, {"e2el_ms": 10_000}, ignore_eos=True)
    assert len(g.token_times) == len(g.token_ids) == 12
    assert g.token_times == sorted(g.token_times) and g.token_times[0] > 0
    assert [lv["name"] for lv in prof["levels"]] == ["c1", "c2"]
    s = prof["summary"]
    assert s["c1/completed"] >= 4 and s["mean_output_tokens"] == 6 and s["stopped_before_cap"] == 0.0
    for key in ("median_ttft_ms", "p99_tpot_ms", "median_itl_ms", "p90_e2el_ms", "output_throughput", "request_goodput"):
        assert s[key] > 0, key
    assert s["median_ttft_ms"] <= s["median_e2el_ms"]


def test_requests_end_at_eos_and_at_stop_strings(engine, tiny, tmp_path):
    """Default semantics: a request ends at EOS or at its stop string, long before its max_tokens."""
    import torch

    with engine.serve(tiny, parse_variant("baseline", {}), tmp_path) as ep:
        first = ep.generate_batch([req("the cat", 8)], ignore_eos=True)[0]
        stop_text = ep.tok.decode(first.token_ids[:2])
        stopped = ep.generate_batch([req("the cat", 8, stop=[stop_text])])[0]
        eos = ep.tok.eos_token_id
        hook = ep.model.lm_head.register_forward_hook(lambda m, i, out: out + 1e4 * torch.nn.functional.one_hot(
            torch.tensor(eos), out.shape[-1]).to(out.dtype))   # a model that answers with EOS at once
        ended = ep.generate_batch([req("the cat", 8), req("1+2=", 8)])
        forced = ep.generate_batch([req("the cat", 8)], ignore_eos=True)[0]
        hook.remove()
    assert len(stopped.token_ids) <= 2 and stopped.text.endswith(stop_text[-1])
    assert [len(g.token_ids) for g in ended] == [1, 1] and ended[0].token_ids == [eos]
    assert len(forced.token_ids) == 8


def test_row_length_rules(engine, tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny.id)
    ids = tok("the cat sat on the mat").input_ids
    assert _row_length(ids + [tok.eos_token_id, 5, 5], tok, [], 50) == len(ids) + 1
    assert _row_length(ids, tok, None, 3) == 3                     # the request's own cap
    assert _row_length(ids, tok, [" sat"], 50) < len(ids)


@pytest.mark.parametrize("spec", [{"method": "ngram", "num_tokens": 3}, {"method": "draft", "num_tokens": 3}])
def test_speculation_keeps_greedy_outputs(engine, tiny, tmp_path, spec):
    prompts = ["1+2=3\n1+2=", "the cat sat on the mat the cat sat", "7+7="]
    with engine.serve(tiny, parse_variant("baseline", {}), tmp_path) as ep:
        ref = [ep.generate_batch([req(p, 16)], ignore_eos=True)[0].token_ids for p in prompts]
    with engine.serve(tiny, parse_variant("spec", {"speculative": spec}), tmp_path) as ep:
        ep.level_extras()
        got = [ep.generate_batch([req(p, 16)], ignore_eos=True)[0].token_ids for p in prompts]
        extras = ep.level_extras()
    assert got == ref
    # every generated token after the first needed a target step, or fewer when drafts were accepted
    assert 0 < extras["spec_decode_target_steps"] <= extras["spec_decode_new_tokens"]


@pytest.mark.parametrize("spec", [
    {"quantization": {"method": "int8"}},
    {"quantization": {"method": "int4"}},
    {"quantization": {"method": "int2"}},
    {"quantization": {"method": "int8_dynamic"}},
    {"kv_cache": {"dtype": "int4"}},
    {"kv_cache": {"dtype": "int2", "backend": "quanto"}},
    {"kv_cache": {"dtype": "fp8"}},
    {"engine_args": {"batch_size": 3}},
    {"engine_args": {"cache_implementation": "static"}},
    {"quantization": {"method": "int8"}, "speculative": {"method": "ngram", "num_tokens": 3}},
])
def test_variant_families_serve_and_generate(engine, tiny, tmp_path, spec):
    v = parse_variant("v", spec)
    engine.check(tiny, v)
    with engine.serve(tiny, v, tmp_path) as ep:
        gens = ep.generate_batch([req("1+2=", 10), req("the cat sat", 10), req("3+4=", 10)], ignore_eos=True)
        stats = ep.stats()
    assert [len(g.token_ids) for g in gens] == [10, 10, 10]
    assert all(len(g.token_times) == 10 for g in gens)
    assert stats["mem_weights_mb"] > 0


@pytest.mark.parametrize("method", ["w4a16", "w8a8"])
def test_offline_checkpoint_is_quantized_and_served(engine, tiny, tmp_path, method):
    """quantize@V writes a compressed-tensors checkpoint; the engine serves it, and refuses a plain model."""
    import json

    from evalgate.models import served_model
    from evalgate.quantize import quantize_checkpoint

    info = quantize_checkpoint(tiny.id, method, tmp_path / "ckpt", group_size=32)
    assert info["layers"] == 2 * 7  # q k v o gate up down per layer; lm_head kept
    qcfg = json.loads((tmp_path / "ckpt/config.json").read_text())["quantization_config"]
    assert qcfg["format"] == {"w4a16": "pack-quantized", "w8a8": "int-quantized"}[method]
    v = parse_variant(method, {"quantization": {"method": method}})
    model = served_model(tiny, v, str(tmp_path / "ckpt"))
    engine.check(model, v)
    with engine.serve(model, v, tmp_path) as ep:
        assert len(ep.generate_batch([req("1+2=", 5)], ignore_eos=True)[0].token_ids) == 5
    with pytest.raises(RuntimeError, match="not a quantized checkpoint"):
        with engine.serve(tiny, v, tmp_path):
            pass


def test_fidelity_against_itself_and_a_noisy_copy(engine, tiny, tmp_path):
    import numpy as np

    from evalgate import fidelity

    texts = ["1+2=3", "the cat sat on the mat", "7+8=15 and 9+9=18"]
    with engine.serve(tiny, parse_variant("baseline", {}), tmp_path) as ep:
        recs = ep.prompt_logprobs(texts, 10_000)
    assert recs[0]["top_ids"].shape[1] == recs[0]["vocab_size"]   # hf: the whole vocabulary
    fidelity.save(recs, tmp_path / "a.npz")
    same = fidelity.compare_logprobs(tmp_path / "a.npz", tmp_path / "a.npz")
    assert same["kl_mean"] == 0 and same["top1_agreement"] == 1 and same["kl_truncated"] == 0
    rng = np.random.default_rng(0)
    noisy = [{**r, "top_logprobs": r["top_logprobs"] + rng.normal(0, 0.5, r["top_logprobs"].shape)} for r in recs]
    for r in noisy:  # renormalise so each row stays a distribution
        r["top_logprobs"] -= np.log(np.exp(r["top_logprobs"]).sum(-1, keepdims=True))
    fidelity.save(noisy, tmp_path / "b.npz")
    diff = fidelity.compare_logprobs(tmp_path / "a.npz", tmp_path / "b.npz")
    assert diff["kl_mean"] > 0.01 and diff["positions"] == sum(len(r["top_ids"]) for r in recs)


def test_missing_library_is_refused_at_validation(engine, tiny, monkeypatch):
    """A variant whose library is absent is refused by check(), before any load (the others still run)."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(VariantUnsupported, match="needs the 'bitsandbytes' library"):
        engine.check(tiny, parse_variant("v", {"quantization": {"method": "nf4"}}))


# -- the variant is really applied (not only accepted): weights, KV cache, speculation ----------------

def _weights(engine, tiny, tmp_path, spec):
    with engine.serve(tiny, parse_variant("v", spec), tmp_path) as ep:
        lin = ep.model.model.layers[0].self_attn.q_proj
        return type(lin).__name__, type(lin.weight).__name__, ep.stats()["mem_weights_mb"]


def test_weight_quantization_is_applied(engine, tiny, tmp_path):
    base = _weights(engine, tiny, tmp_path, {})
    int8 = _weights(engine, tiny, tmp_path, {"quantization": {"method": "int8"}})
    int2 = _weights(engine, tiny, tmp_path, {"quantization": {"method": "int2"}})
    assert base[:2] == ("Linear", "Parameter")
    assert int8[1] == "Int8Tensor"                              # torchao weight-only int8
    assert int2[:2] == ("QLinear", "WeightQBitsTensor")        # optimum-quanto 2-bit
    # stored bytes, not the float shape: the linear layers shrink (the embedding stays fp32)
    assert int8[2] < 0.8 * base[2] and int2[2] < int8[2]


@pytest.mark.parametrize("spec, layer", [({}, "DynamicLayer"), ({"kv_cache": {"dtype": "int4"}}, "QuantoQuantizedLayer"),
                                         ({"kv_cache": {"dtype": "fp8"}}, "Fp8QuantizedLayer")])
def test_kv_cache_dtype_is_the_cache_in_use(engine, tiny, tmp_path, spec, layer):
    with engine.serve(tiny, parse_variant("v", spec), tmp_path) as ep:
        enc = ep.tok(["1+2="], return_tensors="pt")
        out = ep.model.generate(**enc, max_new_tokens=3, do_sample=False, return_dict_in_generate=True,
                                pad_token_id=ep.tok.pad_token_id, **ep.gen_kwargs)
    assert type(out.past_key_values.layers[0]).__name__ == layer


def test_speculation_is_applied(engine, tiny, tmp_path, monkeypatch):
    """Prompt lookup asks its candidate generator for drafts; a draft model is called; and with a draft
    identical to the target every draft is accepted: fewer target steps than tokens."""
    from transformers.generation import candidate_generator as cg

    calls = {"lookup": 0}
    real = cg.PromptLookupCandidateGenerator.get_candidates

    def counted(self, *a, **k):
        calls["lookup"] += 1
        return real(self, *a, **k)

    monkeypatch.setattr(cg.PromptLookupCandidateGenerator, "get_candidates", counted)
    with engine.serve(tiny, parse_variant("v", {"speculative": {"method": "ngram", "num_tokens": 3}}), tmp_path) as ep:
        ep.generate_batch([req("the cat sat on the mat the cat sat on the", 12)], ignore_eos=True)
    assert calls["lookup"] > 0
    same = ModelSpec(source="local", id=tiny.id, draft=tiny.id, dtype="float32")   # the draft is the target
    with engine.serve(same, parse_variant("v", {"speculative": {"method": "draft", "num_tokens": 4}}), tmp_path) as ep:
        draft_calls = []
        ep.gen_kwargs["assistant_model"].register_forward_hook(lambda *a: draft_calls.append(1))
        ep.level_extras()
        ep.generate_batch([req("1+2=", 16)], ignore_eos=True)
        extras = ep.level_extras()
    assert draft_calls and extras["spec_decode_new_tokens"] / extras["spec_decode_target_steps"] > 2
