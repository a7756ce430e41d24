"""The llamacpp adapter against a real llama-server: a tiny Llama with the fixture's tokenizer is built here,
converted by llama.cpp's own convert_hf_to_gguf.py (F16) and quantized by llama-quantize (Q8_0); then the
server's lifecycle (health wait, log, no orphan), its tokenizer and next-token distribution against
transformers', the load generator, lm-eval through it, llama-perplexity's KL divergence and llama-bench.
Needs llama.cpp's tools (`make llamacpp`, which `make test` runs first); skipped without them."""
import json
import re
from pathlib import Path

import pytest
from test_engine_vllm import _alive

from evalgate import gguf
from evalgate.config import ModelSpec, parse_variant
from evalgate.engines import get_engine
from evalgate.results import VariantResults

try:
    TOOLS = gguf.tools(build=False)
except gguf.ToolsMissing as e:
    pytest.skip(f"{e}", allow_module_level=True)

OPTS = {"seed": 0, "start_timeout_s": 60, "eval_concurrency": 2, "max_length": 128,
        "fidelity": {"ctx_size": 64}, "llama_bench": {"n_prompt": 16, "n_gen": 8, "repetitions": 1},
        "engine_args": {"ctx_size": 512, "parallel": 2, "flash_attn": "auto", "cache_prompt": False}}
TEXTS = ["12+34=46", "copy lam tor bisu=lam tor bisu", "count 17 22=17 18 19 20 21 22", "the red fox sees the old cat .",
         "recall t57 c31 x20 ? c31", "a  b   c\n\nd\te 007 1000000", "héllo wörld ✓ 🦙", "   leading and trailing   "]


def tiny_llama(path: Path, layers: int, tok) -> None:
    import torch

    from evalgate.toymodel.train import new_model

    torch.manual_seed(layers)
    m = new_model({"hidden_size": 64, "num_layers": layers, "num_heads": 2, "intermediate_size": 128,
                   "max_position_embeddings": 256}, tok, "test")
    m.save_pretrained(path)
    tok.save_pretrained(path)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Fixture-style model + draft → GGUF F16 (convert_hf_to_gguf.py) → Q8_0 (llama-quantize)."""
    from evalgate.toymodel.corpus import Corpus
    from evalgate.toymodel.tokenizer import train_tokenizer

    d = tmp_path_factory.mktemp("llamacpp")
    corpus = Corpus(0, {"add": 4, "copy": 4, "recall": 4, "sentence": 4}, [1, 3, 1], [3, 6], [2, 4])
    tok = train_tokenizer(corpus.tokenizer_text(2000), 300)
    tiny_llama(d / "model", 2, tok)
    tiny_llama(d / "draft", 1, tok)
    info = {"f16": gguf.convert(d / "model", d / "model-f16.gguf", TOOLS),
            "draft": gguf.convert(d / "draft", d / "draft-f16.gguf", TOOLS)}
    info["q8_0"] = gguf.quantize(d / "model-f16.gguf", d / "model-q8_0.gguf", "q8_0", TOOLS)
    model = ModelSpec(source="local", id=str(d / "model"), draft=str(d / "draft"),
                      gguf=str(d / "model-f16.gguf"), draft_gguf=str(d / "draft-f16.gguf"))
    return d, model, info, tok


def test_conversion_and_quantization(built):
    d, model, info, _ = built
    assert info["f16"]["pre_tokenizer"] == "smollm" and info["f16"]["type"] == "F16"
    assert info["q8_0"]["type"] == "Q8_0" and info["q8_0"]["params_per_type"].get("Q8_0", 0) > 0
    assert info["q8_0"]["bits_per_weight"] < gguf.tensor_types(d / "model-f16.gguf", TOOLS)["bits_per_weight"]


def test_unknown_tokenizer_is_one_line_naming_the_fix(tiny, tmp_path):
    """The conftest model's plain byte-level BPE is in neither the converter's hash list nor our registry."""
    with pytest.raises(gguf.ConversionError) as e:
        gguf.convert(tiny.id, tmp_path / "x.gguf", TOOLS)
    msg = str(e.value)
    assert "\n" not in msg and "pre-tokenizer" in msg and "tokenizer.model" in msg and "PRE_TOKENIZERS" in msg


def test_server_lifecycle_tokenizer_and_logits(built, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from evalgate.engines.llamacpp import _post

    d, model, _, tok = built
    engine = get_engine("llamacpp", OPTS)
    v = parse_variant("baseline", {})
    engine.check(model, v)
    with engine.serve(model, v, tmp_path) as ep:
        pid = ep.pid
        assert _alive(pid) and (tmp_path / "server.log").exists()
        for text in TEXTS:   # the registered pre-tokenizer splits as transformers does
            ids = _post(f"{ep.base_url}/tokenize", {"content": text, "add_special": False})["tokens"]
            assert ids == tok(text, add_special_tokens=False).input_ids, text
        hf = AutoModelForCausalLM.from_pretrained(d / "model", dtype=torch.float32).eval()
        for text in TEXTS[:4]:
            ids = tok(text, add_special_tokens=False).input_ids
            res = _post(f"{ep.base_url}/completion", {"prompt": ids, "n_predict": 1, "n_probs": 5, "temperature": 0})
            top = {t["id"]: t["logprob"] for t in res["completion_probabilities"][0]["top_logprobs"]}
            with torch.no_grad():
                ref = torch.log_softmax(hf(torch.tensor([ids])).logits[0, -1], -1)
            for tid, lp in top.items():   # F16 weights against the float32 checkpoint
                assert abs(lp - float(ref[tid])) < 0.02, (text, tid)
        stats = ep.stats()
    assert stats["mem_peak_mb"] > 0 and stats["kv_cache_tokens"] == 512 and stats["mem_weights_mb"] > 0
    assert json.loads((tmp_path / "server_cmd.json").read_text())[0].endswith("llama-server")
    assert not _alive(pid), "llama-server outlived its variant"


def test_load_levels_lm_eval_fidelity_and_bench(built, tmp_path):
    from lm_eval.api.instance import Instance

    d, model, _, tok = built
    engine = get_engine("llamacpp", OPTS)
    reqs = [{"index": i, "source": "t", "prompt": p, "max_tokens": 6, "stop": ["\n"]} for i, p in
            enumerate(["12+34=", "copy lam tor=", "count 3 9=", "the red", "5+5=", "copy bo=", "count 1 4=", "the old"])]
    base_dir, var_dir = VariantResults(tmp_path / "base"), VariantResults(tmp_path / "q8")
    base_dir.reset(), var_dir.reset()
    texts = [f"{a}+{a + 7}={2 * a + 7} copy lam tor=lam tor the red fox sees the old cat ." for a in range(10, 50)]
    with engine.serve(model, parse_variant("baseline", {}), base_dir.path) as ep:
        records, duration, _ = ep.run_requests(reqs, concurrency=2, warmup=1)
        assert len(records) == 8 and all(r["ok"] for r in records) and duration > 0, [r.get("error") for r in records]
        many = [r for _ in range(10) for r in ep.run_requests(reqs * 4, concurrency=2)[0]]
        # llama-server drops kept-alive connections: with them, 28 of 1,280 such requests failed
        assert not [r["error"] for r in many if not r["ok"]]
        for r in records:
            assert 1 <= r["output_tokens"] <= 6 and r["ttft"] > 0 and len(r["itl"]) == r["output_tokens"] - 1
            assert r["capped"] == (r["output_tokens"] >= 6) and r["e2el"] >= r["ttft"]
        rated, _, _ = ep.run_requests(reqs[:4], concurrency=None, rate=20.0)
        assert all(r["ok"] for r in rated) and rated[-1]["start"] > 0     # open loop: sent over time
        lm = ep.lm_eval_model()
        outs = lm.generate_until([Instance("generate_until", {}, ("12+34=", {"until": ["\n"], "max_gen_toks": 5}), 0),
                                  Instance("generate_until", {}, ("copy lam=", {"until": ["\n"], "max_gen_toks": 5}), 1)])
        assert len(outs) == 2 and all(isinstance(o, str) for o in outs)
        assert ep.reference_fidelity(texts, None, base_dir) == {} and base_dir.file("fidelity.kld").exists()
        bench = ep.engine_bench()
        assert bench["llama_bench/tg_tok_s"] > 0 and bench["llama_bench/pp_tok_s"] > 0
    q8 = ModelSpec(**{**model.__dict__, "gguf": str(d / "model-q8_0.gguf")})
    with engine.serve(q8, parse_variant("q8_0", {"quantization": {"method": "q8_0"}}), var_dir.path) as ep:
        fid = ep.reference_fidelity(texts, base_dir, var_dir)
    assert 0 <= fid["fidelity/kl_mean"] < 0.01 and fid["fidelity/top1_agreement"] > 0.9
    assert 0.95 < fid["fidelity/ppl_ratio"] < 1.05 and fid["fidelity/kl_truncated"] == 0.0


def test_speculative_kv_cache_and_flash_attention_variants_serve(built, tmp_path):
    """Each llama.cpp knob the variants use, on a real server: speculation (draft model, n-gram) keeps the
    greedy outputs; the KV-cache types and flash attention reach llama.cpp (its own log says so)."""
    d, model, _, _ = built
    engine = get_engine("llamacpp", OPTS)
    reqs = [{"index": i, "prompt": p, "max_tokens": 8, "stop": []} for i, p in enumerate(["12+34=", "copy lam tor="])]
    outs = {}
    for name, spec in (("base", {}), ("draft", {"speculative": {"method": "draft", "num_tokens": 3}}),
                       ("ngram", {"speculative": {"method": "ngram", "num_tokens": 3}}),
                       ("kv", {"kv_cache": {"dtype": "q8_0"}}), ("kv4", {"kv_cache": {"dtype": "q4_0"}}),
                       ("fa_off", {"engine_args": {"flash_attn": False}})):
        (tmp_path / name).mkdir()
        v = parse_variant(name, spec)
        engine.check(model, v)
        with engine.serve(model, v, tmp_path / name) as ep:
            records, _, extras = ep.run_requests(reqs, concurrency=1)
            outs[name] = [r["text"] for r in records]
            facts = ep.stats()
        log = (tmp_path / name / "server.log").read_text()
        if name == "draft":
            assert extras["spec_decode_draft_tokens"] > 0
        if name in ("kv", "kv4"):   # llama.cpp's own account of the cache it allocated
            t = spec["kv_cache"]["dtype"]
            assert re.search(rf"K \({t}\).*V \({t}\)", log) and facts["flash_attn"] == 1.0, log[-2000:]
        if name == "fa_off":
            assert facts["flash_attn"] == 0.0
    assert outs["draft"] == outs["base"] and outs["ngram"] == outs["base"]   # lossless under greedy decoding


def test_prompt_cache_reuses_a_shared_prefix(built, tmp_path):
    """cache_prompt (the cache_prompt variant, meant for workload=shared_prefix): a slot reuses the KV of the
    prefix it already holds; off (the baseline's setting), every prompt is computed again."""
    _, model, _, _ = built
    engine = get_engine("llamacpp", OPTS)
    prefix = "the red fox sees the old cat . " * 6
    reqs = [{"index": i, "prompt": prefix + p, "max_tokens": 4, "stop": []}
            for i, p in enumerate(["12+34=", "copy lam tor=", "5+5=", "count 3 9="])]
    cached = {}
    for name, on in (("off", False), ("on", True)):
        (tmp_path / name).mkdir()
        v = parse_variant(name, {"engine_args": {"cache_prompt": on}})
        with engine.serve(model, v, tmp_path / name) as ep:
            records, _, _ = ep.run_requests(reqs, concurrency=1)
        assert all(r["ok"] for r in records)
        cached[name] = [r["cached_tokens"] for r in records]
    assert cached["off"] == [0, 0, 0, 0]
    assert min(cached["on"][1:]) >= 20, cached   # the later requests found the shared prefix in their slot


def test_a_server_that_cannot_start_fails_clearly(built, tmp_path):
    _, model, _, _ = built
    bad = ModelSpec(**{**model.__dict__, "gguf": str(tmp_path / "missing.gguf")})
    with pytest.raises(RuntimeError, match="llama-server exited"):
        with get_engine("llamacpp", OPTS).serve(bad, parse_variant("v", {}), tmp_path):
            pass


def test_build_optimises_ggml_at_O3_and_the_rest_at_O1(tmp_path):
    """The build's flags, configured (not compiled) on the vendored tree: ggml's kernels keep Release's -O3
    through cmake's per-project include, everything else gets -O1 (half the compile time, README)."""
    import shutil
    import subprocess

    flags = gguf.configure_flags(tmp_path)
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run(["cmake", "-S", str(TOOLS.src), "-B", str(tmp_path / "b"), *gen, *flags,
                    "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON"], check=True, capture_output=True)
    level = {}
    for c in json.loads((tmp_path / "b" / "compile_commands.json").read_text()):
        f = Path(c["file"])   # a source file, or one cmake generated (llama's unity-build files)
        rel = str(f.relative_to(TOOLS.src if f.is_relative_to(TOOLS.src) else tmp_path / "b"))
        cmd = c.get("command") or " ".join(c.get("arguments", []))
        level[rel] = set(re.findall(r" (-O\d)\b", cmd))
        if rel.startswith("ggml/"):   # no AMX kernels: they died with SIGILL on an AMX-reporting VM (gguf.NO_AMX)
            assert all(f in cmd.split() for f in gguf.NO_AMX.split()), (rel, cmd)
    ggml = {f: o for f, o in level.items() if f.startswith("ggml/")}
    rest = {f: o for f, o in level.items() if not f.startswith("ggml/")}
    assert ggml["ggml/src/ggml-cpu/ops.cpp"] == ggml["ggml/src/ggml-cpu/ggml-cpu.c"] == {"-O3"}
    assert all(o == {"-O3"} for o in ggml.values())
    assert rest["src/llama-model.cpp"] == rest["tools/server/server.cpp"] == {"-O1"}
    assert all(o == {"-O1"} for o in rest.values())
