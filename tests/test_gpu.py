"""The vllm adapter for real, on a GPU host: `pytest -m gpu` (CI is CPU-only: these skip, saying why).

A small random Llama with the toy tokenizer is served by `vllm serve` through VLLMEngine: start without
waiting, health, vLLM's own benchmark loop at a concurrency and at a request rate, prompt log-probs
(fidelity), lm-eval's local-completions against the server (generate_until and loglikelihood tasks),
and every variant family's flags accepted by vLLM, their servers started side by side with the
scheduler's memory shares."""
import json
import os

import pytest

pytestmark = pytest.mark.gpu


def _gpu_reason() -> str | None:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return "needs vLLM (the GPU host's offline bundle: gpu/README.md); run `pytest -m gpu` there"
    import torch

    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    return None


REASON = _gpu_reason()
if REASON:
    pytestmark = [pytest.mark.gpu, pytest.mark.skip(reason=f"gpu: {REASON}")]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A random 4-layer Llama (hidden 256) and a 1-layer draft, the toy tokenizer, the toy tasks."""
    import torch

    from evalgate.config import ModelSpec
    from evalgate.toymodel.corpus import Corpus
    from evalgate.toymodel.tasks import write_tasks
    from evalgate.toymodel.tokenizer import train_tokenizer
    from evalgate.toymodel.train import new_model

    d = tmp_path_factory.mktemp("gpu")
    c = Corpus(0, {"add": 40, "copy": 20, "recall": 20, "sentence": 20, "count": 20}, add_digits=[1, 3, 1],
               copy_words=[3, 6], recall_pairs=[2, 4])
    tok = train_tokenizer(c.tokenizer_text(4000), 512)
    for name, layers in (("model", 4), ("draft", 1)):
        torch.manual_seed(0)
        m = new_model({"hidden_size": 256, "num_layers": layers, "num_heads": 4, "intermediate_size": 512,
                       "max_position_embeddings": 1024}, tok, name)
        m.save_pretrained(d / name)
        tok.save_pretrained(d / name)
    cwd = os.getcwd()
    os.chdir(d)
    write_tasks(c.heldout, d / "tasks", tok)
    os.chdir(cwd)
    return ModelSpec(source="local", id=str(d / "model"), draft=str(d / "draft"), dtype="bfloat16"), d


OPTS = {"seed": 0, "kv_cache_memory_gb": 1, "server_overhead_gb": 2, "max_model_len": 1024, "max_length": 1024,
        "eval_concurrency": 16, "gpu_memory_utilization": 0.3, "start_timeout_s": 600,
        "engine_args": {"max_num_seqs": 64}}


@pytest.fixture(scope="module")
def served(model, tmp_path_factory):
    from evalgate.config import parse_variant
    from evalgate.engines import get_engine

    spec, _ = model
    engine = get_engine("vllm", OPTS)
    work = tmp_path_factory.mktemp("served")
    with engine.serve(spec, parse_variant("baseline", {}), work) as ep:
        yield engine, ep, work


def test_health_start_facts_and_memory(served):
    engine, ep, work = served
    stats = ep.stats()
    assert stats["kv_cache_tokens"] > 0 and stats["mem_weights_mb"] > 0
    assert stats.get("time/start/weights_s") is not None
    free, total = engine.device_memory()
    assert 0 < free <= total


def test_benchmark_loop_at_a_concurrency_and_a_rate(served):
    _, ep, _ = served
    reqs = [{"index": i, "source": "t", "prompt": f"{i}+{i}=", "max_tokens": 12, "stop": ["\n"]} for i in range(32)]
    recs, dur, extras = ep.run_requests(reqs, concurrency=8, warmup=2)
    assert len(recs) == 32 and all(r["ok"] for r in recs) and dur > 0
    assert all(1 <= r["output_tokens"] <= 12 for r in recs) and all(r["ttft"] > 0 for r in recs)
    assert extras["vllm"]["completed"] == 32
    recs, dur, _ = ep.run_requests(reqs[:16], concurrency=None, rate=20.0)
    starts = sorted(r["start"] for r in recs)
    assert all(r["ok"] for r in recs) and starts[-1] > 0.2     # Poisson arrivals, not all at once
    forced, _, _ = ep.run_requests(reqs[:4], concurrency=4, ignore_eos=True)
    assert all(r["output_tokens"] == 12 and r["capped"] for r in forced)


def test_prompt_logprobs_for_fidelity(served):
    _, ep, _ = served
    recs = ep.prompt_logprobs(["12+34=46", "the red fox sees the old cat ."], 20)
    assert recs[0]["top_ids"].shape[1] == 20 and recs[0]["top_logprobs"].shape == recs[0]["top_ids"].shape


def test_lm_eval_through_the_server(served, model):
    from evalgate.evaluate import evaluate, task_manager
    from evalgate.results import VariantResults

    _, ep, work = served
    _, d = model
    cwd = os.getcwd()
    os.chdir(d)
    try:
        tm = task_manager(["fx_add", "fx_recall", "fx_ppl"], str(d / "tasks"))
        res = evaluate(ep.lm_eval_model(), ["fx_add", "fx_recall", "fx_ppl"], tm, VariantResults(work), limit=8)
    finally:
        os.chdir(cwd)
    assert {"lmeval/fx_add/exact_match/none", "lmeval/fx_recall/acc/none", "lmeval/fx_ppl/word_perplexity/none"} <= set(res)
    assert (work / "samples_fx_add.jsonl").read_text().count("\n") == 8


def test_every_variant_family_is_accepted_side_by_side(model, tmp_path):
    """fp8 weights, fp8 KV, n-gram and draft speculation, a w4a16 checkpoint, engine args: each server
    started at once with its memory share, each healthy and answering."""
    from evalgate.config import parse_variant
    from evalgate.engines import get_engine
    from evalgate.models import served_model
    from evalgate.quantize import quantize_checkpoint
    from evalgate.schedule import memory_shares

    spec, _ = model
    engine = get_engine("vllm", OPTS)
    variants = {"fp8": {"quantization": {"method": "fp8"}}, "kv_fp8": {"kv_cache": {"dtype": "fp8"}},
                "ngram": {"speculative": {"method": "ngram", "num_tokens": 4}},
                "draft": {"speculative": {"method": "draft", "num_tokens": 3}},
                "w4a16": {"quantization": {"method": "w4a16"}},
                "eager": {"engine_args": {"enforce_eager": True, "max_num_seqs": 16}}}
    quantize_checkpoint(spec.id, "w4a16", tmp_path / "ckpt", group_size=32)
    parsed = {n: parse_variant(n, v) for n, v in variants.items()}
    models = {n: served_model(spec, v, str(tmp_path / "ckpt") if n == "w4a16" else None) for n, v in parsed.items()}
    for n, v in parsed.items():
        engine.check(models[n], v)
    _, total = engine.device_memory()
    shares = memory_shares({n: engine.memory_need(models[n], v) for n, v in parsed.items()}, total)
    servers = {}
    try:
        for n, v in parsed.items():
            (tmp_path / n).mkdir()
            servers[n] = engine.start(models[n], v, tmp_path / n, shares[n])
        for n, srv in servers.items():
            ep = srv.wait()
            recs, _, extras = ep.run_requests([{"index": 0, "source": "t", "prompt": "12+34=", "max_tokens": 8,
                                                "stop": []}], concurrency=1)
            assert recs[0]["ok"], (n, recs[0].get("error"))
            if n in ("ngram", "draft"):
                assert "spec_decode_num_drafts" in extras, n
            cmd = json.loads((tmp_path / n / "server_cmd.json").read_text())
            assert "--kv-cache-memory-bytes" in cmd
    finally:
        for srv in servers.values():
            srv.stop()


def test_prompt_logprobs_under_draft_speculation_are_the_plain_servers(served, model, tmp_path):
    """Greedy speculation is lossless and prompt log-probs come from the target alone, so a draft server
    must return the plain server's: one prompt at a time, up to the CUDA-graph limit (512 tokens) and past
    it. (Scheduled GPU runs saw `draft`'s fx_ppl off now and then; bench/spec_logprobs.py hunts for it.)"""
    from transformers import AutoTokenizer

    from bench.spec_logprobs import differences, prompt_texts
    from evalgate.config import parse_variant

    engine, plain, _ = served
    spec, _ = model
    texts = prompt_texts(AutoTokenizer.from_pretrained(spec.id), 24, longest=900)
    with engine.serve(spec, parse_variant("draft", {"speculative": {"method": "draft", "num_tokens": 3}}),
                      tmp_path) as draft:
        ref = [plain.prompt_logprobs([t], 1)[0]["top_logprobs"][:, 0] for t in texts]
        got = [draft.prompt_logprobs([t], 1)[0]["top_logprobs"][:, 0] for t in texts]
    diff = differences(ref, got)
    assert (diff <= 0.1).all(), f"{int((diff > 0.1).sum())} of {len(texts)} prompts differ, by up to {diff.max():.2f} nats"


def test_varlen_training_step_matches_sdpa():
    """The GPU fixture trains with FlashAttention's varlen kernel (fixture.attn_implementation: varlen): on
    packed rows its loss and gradients equal sdpa's with the block-diagonal mask, up to bf16 rounding."""
    import torch
    import torch.nn.functional as F

    from evalgate.toymodel.corpus import Corpus
    from evalgate.toymodel.tokenizer import train_tokenizer
    from evalgate.toymodel.train import VARLEN, check_attn, new_model, packed_batches, packed_segments

    dev = torch.device("cuda")
    check_attn(VARLEN, dev, True)
    c = Corpus(0, {"add": 10, "copy": 10, "recall": 10, "sentence": 10, "count": 10}, add_digits=[1, 3, 1],
               copy_words=[3, 6], recall_pairs=[2, 4], count_len=[8, 40])
    tok = train_tokenizer(c.tokenizer_text(4000), 512)
    mix = {"add": 0.4, "copy": 0.2, "recall": 0.2, "sentence": 0.1, "count": 0.1}
    ids, labels, pos = next(packed_batches(c.stream(mix, "t"), tok, rows=4, seq_len=512))
    cu, longest = packed_segments(pos)
    assert len(cu) > 4 * 3  # several items per row
    torch.manual_seed(0)
    model = new_model({"hidden_size": 256, "num_layers": 2, "num_heads": 4, "intermediate_size": 512,
                       "max_position_embeddings": 1024}, tok, "t").to(dev)
    ids, labels, pos = ids.to(dev), labels.to(dev), pos.to(dev)
    out = {}
    for attn, kw in (("sdpa", {}), (VARLEN, dict(cu_seq_lens_q=cu.to(dev), cu_seq_lens_k=cu.to(dev),
                                                   max_length_q=longest, max_length_k=longest))):
        model.set_attn_implementation(attn)
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(input_ids=ids, position_ids=pos, use_cache=False, **kw).logits[:, :-1]
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=-100)
        loss.backward()
        grad = torch.cat([p.grad.flatten().float() for p in model.parameters()])
        out[attn] = loss.item(), grad
    (l1, g1), (l2, g2) = out["sdpa"], out[VARLEN]
    assert abs(l1 - l2) < 1e-2 * abs(l1), (l1, l2)
    assert F.cosine_similarity(g1, g2, dim=0) > 0.99
