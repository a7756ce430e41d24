"""The llamacpp adapter without a server: variant → llama-server flags, what it refuses before anything
loads, the pre-tokenizer registry and the converter's one-line errors, what it reads from llama.cpp's
output (server log, /metrics, llama-perplexity's KL summary), the Modelfile."""
import json

import pytest

from evalgate.config import ConfigError, ModelSpec, parse_variant
from evalgate.engines import get_engine
from evalgate.engines.base import VariantUnsupported
from evalgate.engines.llamacpp import log_facts, perplexity_stats, prometheus, server_args
from evalgate.gguf import conversion_error, modelfile, registered_pre_tokenizer

OPTS = {"seed": 1, "engine_args": {"ctx_size": 1024, "parallel": 4, "flash_attn": "auto", "cache_prompt": False}}
MODEL = ModelSpec(source="local", id="/m", draft="/d", gguf="/g/model-f16.gguf", draft_gguf="/g/draft-f16.gguf")


def args_of(spec, opts=OPTS):
    return server_args(MODEL.gguf, MODEL.draft_gguf, parse_variant("v", spec), opts)


def value(args, flag):
    return args[args.index(flag) + 1] if flag in args else None


def test_baseline_args():
    a = args_of({})
    assert a[:11] == ["--model", "/g/model-f16.gguf", "--alias", "model", "--seed", "1", "--metrics", "--no-webui",
                      "--log-verbosity", "4", "--flash-attn"]
    assert value(a, "--flash-attn") == "auto" and value(a, "--ctx-size") == "1024" and value(a, "--parallel") == "4"
    assert "--cache-type-k" not in a and "--cache-prompt" not in a and "--no-cache-prompt" not in a  # a request field


@pytest.mark.parametrize("spec, expect", [
    ({"kv_cache": {"dtype": "q8_0"}}, {"--cache-type-k": "q8_0", "--cache-type-v": "q8_0", "--flash-attn": "on"}),
    ({"kv_cache": {"dtype": "int4"}}, {"--cache-type-k": "q4_0", "--cache-type-v": "q4_0", "--flash-attn": "on"}),
    ({"kv_cache": {"dtype": "q8_0", "v_dtype": "f16"}, "engine_args": {"flash_attn": False}},
     {"--cache-type-k": "q8_0", "--cache-type-v": "f16", "--flash-attn": "off"}),
    ({"engine_args": {"flash_attn": False}}, {"--flash-attn": "off"}),
    ({"engine_args": {"flash_attn": True}}, {"--flash-attn": "on"}),
    ({"engine_args": {"ctx_size": 4096}}, {"--ctx-size": "4096"}),
    ({"engine_args": {"batch_size": 64, "ubatch_size": 64}}, {"--batch-size": "64", "--ubatch-size": "64"}),
    ({"engine_args": {"parallel": 1, "cache_reuse": 256}}, {"--parallel": "1", "--cache-reuse": "256"}),
])
def test_variant_fields_map_to_flags(spec, expect):
    a = args_of(spec)
    assert {f: value(a, f) for f in expect} == expect
    assert a.count("--ctx-size") == 1 and a.count("--flash-attn") == 1   # a variant overrides the engine default


def test_boolean_engine_args_are_switches():
    a = args_of({"engine_args": {"kv_unified": True, "context_shift": False}})
    assert "--kv-unified" in a and "--no-context-shift" in a


def test_speculative_decoding():
    a = args_of({"speculative": {"method": "draft", "num_tokens": 3}})
    assert {f: value(a, f) for f in ("--spec-draft-model", "--spec-type", "--spec-draft-n-max")} == {
        "--spec-draft-model": "/g/draft-f16.gguf", "--spec-type": "draft-simple", "--spec-draft-n-max": "3"}
    a = args_of({"speculative": {"method": "ngram", "num_tokens": 4, "lookup_max": 3}})
    assert value(a, "--spec-type") == "ngram-simple" and value(a, "--spec-ngram-simple-size-m") == "4"
    assert value(a, "--spec-ngram-simple-size-n") == "3"


def test_quantized_weights_are_a_file_not_a_flag():
    q = args_of({"quantization": {"method": "q2_k"}})
    assert q == args_of({})   # the GGUF file differs (quantize@<variant>), the flags do not


@pytest.fixture
def engine():
    e = get_engine("llamacpp", OPTS)
    e._help_text = "  -c, --ctx-size N\n  -np, --parallel N\n  -fa, --flash-attn [on|off|auto]\n  --cache-reuse N\n"
    return e


@pytest.mark.parametrize("spec, msg", [
    ({"quantization": {"method": "int8"}}, "not a GGUF type"),
    ({"quantization": {"method": "fp8"}}, "not a GGUF type"),
    ({"kv_cache": {"dtype": "fp8"}}, "kv_cache.dtype 'fp8'"),
    ({"kv_cache": {"dtype": "q8_0", "v_dtype": "int2"}}, "kv_cache.v_dtype 'int2'"),
    ({"kv_cache": {"dtype": "q4_0"}, "engine_args": {"flash_attn": False}}, "needs flash attention"),
    ({"dtype": "bfloat16"}, "dtype 'bfloat16'"),
    ({"engine_args": {"flash_attn": "maybe"}}, "flash_attn 'maybe'"),
    ({"engine_args": {"max_num_seqs": 8}}, "--max-num-seqs"),
])
def test_check_refuses_before_loading(engine, spec, msg):
    with pytest.raises(VariantUnsupported, match=msg):
        engine.check(MODEL, parse_variant("v", spec))


def test_check_accepts_what_it_maps(engine):
    for spec in ({}, {"quantization": {"method": "q2_k"}}, {"kv_cache": {"dtype": "q8_0"}},
                 {"kv_cache": {"dtype": "q8_0", "v_dtype": "f16"}, "engine_args": {"flash_attn": False}},
                 {"speculative": {"method": "draft"}}, {"engine_args": {"ctx_size": 64, "cache_reuse": 8, "cache_prompt": True}}):
        engine.check(MODEL, parse_variant("v", spec))


def test_check_refuses_a_quantized_kv_cache_on_narrow_heads(engine, tmp_path):
    import dataclasses

    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 128, "num_attention_heads": 8}))
    narrow = dataclasses.replace(MODEL, id=str(tmp_path))
    with pytest.raises(VariantUnsupported, match="heads have 16"):
        engine.check(narrow, parse_variant("v", {"kv_cache": {"dtype": "q8_0"}}))
    engine.check(narrow, parse_variant("v", {"kv_cache": {"dtype": "f16"}}))
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 128, "num_attention_heads": 4}))
    engine.check(narrow, parse_variant("v", {"kv_cache": {"dtype": "q8_0"}}))


def test_check_needs_the_gguf_files(engine):
    import dataclasses

    with pytest.raises(VariantUnsupported, match="draft"):
        engine.check(dataclasses.replace(MODEL, draft_gguf=None), parse_variant("v", {"speculative": {"method": "draft"}}))
    with pytest.raises(VariantUnsupported, match="no GGUF"):
        engine.check(dataclasses.replace(MODEL, gguf=None), parse_variant("v", {}))


def test_gated_task_the_engine_cannot_evaluate_is_one_config_line():
    """fx_recall (multiple_choice) needs prompt log-probs: gating it on llamacpp fails before anything loads."""
    from evalgate import runner

    class TM:
        def load(self, tasks):
            kinds = {"fx_recall": "multiple_choice", "fx_ppl": "loglikelihood_rolling"}
            return {"tasks": {t: type("T", (), {"config": type("C", (), {"output_type": kinds.get(t, "generate_until")})})()
                              for t in tasks}}

    from test_config import CONF

    from evalgate.compose import compose
    from evalgate.config import parse

    cfg = parse(compose(["engine=llamacpp"], CONF))
    skip = get_engine("llamacpp", cfg.engine).skipped_output_types
    with pytest.raises(ConfigError, match=r"gate.quality: task 'fx_(recall|ppl)' is gated but engine 'llamacpp'"):
        runner.skipped_tasks(cfg, skip, TM())
    cfg = parse(compose(["preset=llamacpp", "eval.tasks=[fx_add,fx_copy,fx_count,fx_recall]"], CONF))
    assert set(runner.skipped_tasks(cfg, skip, TM())) == {"fx_recall"}   # not gated there: skipped, with the reason


def test_fixture_tokenizer_has_a_registered_pre_tokenizer(tmp_path):
    from evalgate.toymodel.tokenizer import train_tokenizer

    train_tokenizer(["12+34=46", "copy lam tor=lam tor", "the red fox sees the old cat ."], 300).save_pretrained(tmp_path)
    assert registered_pre_tokenizer(tmp_path) == "smollm"


def test_unknown_pre_tokenizer_is_not_registered(tiny):
    assert registered_pre_tokenizer(tiny.id) is None     # plain byte-level BPE: the converter's hash list decides


def test_converter_errors_are_one_line_naming_the_fix():
    out = ("WARNING:** chkhsh:  " + "ab" * 32
           + "\nNotImplementedError: BPE pre-tokenizer was not recognized - update get_vocab_base_pre()\n")
    msg = conversion_error(out, "fixtures/model")
    assert "\n" not in msg and "tokenizer.model" in msg and "PRE_TOKENIZERS" in msg and "abababababab" in msg
    assert "pip install sentencepiece" in conversion_error("ModuleNotFoundError: No module named 'sentencepiece'", "m")
    assert "Foo" in conversion_error("ERROR: Model Foo is not supported", "m")


def test_server_log_and_metrics_are_read():
    log = ("0.00.022.241 I load_tensors:   CPU_Mapped model buffer size =     1.62 MiB\n"
           "0.00.023.843 I llama_kv_cache: size =    1.50 MiB (   256 cells,   3 layers,  4/4 seqs), K (f16):    0.75 MiB, "
           "V (f16):    0.75 MiB\n0.00.025.109 I resolve_fused_ops: Flash Attention enabled\n")
    assert log_facts(log) == {"mem_weights_mb": 1.62, "kv_cache_mb": 1.5, "kv_cache_tokens": 1024.0, "flash_attn": 1.0}
    assert log_facts("I llama_context: flash_attn            = disabled\n") == {"flash_attn": 0.0}   # forced off
    assert log_facts("I llama_context: flash_attn            = enabled\n") == {"flash_attn": 1.0}    # forced on
    m = prometheus("# HELP x\nllamacpp:spec_decode_num_drafts_total 12\nllamacpp:prompt_tokens_total 3.5e2\n")
    assert m == {"llamacpp:spec_decode_num_drafts_total": 12.0, "llamacpp:prompt_tokens_total": 350.0}


def test_kl_divergence_summary_is_parsed():
    out = """====== Perplexity statistics ======
Mean PPL(Q)                   :   5.123456 ±   0.100000
Mean PPL(base)                :   5.000000 ±   0.100000
Mean PPL(Q)/PPL(base)         :   1.024691 ±   0.002000
====== KL divergence statistics ======
Mean    KLD:   0.012345 ±   0.000500
Maximum KLD:   1.500000
99.0%   KLD:   0.150000
RMS Δp    :  2.345 ± 0.100 %
Same top p: 97.500 ± 0.300 %
"""
    s = perplexity_stats(out)
    assert s["kl_mean"] == 0.012345 and s["kl_p99"] == 0.15 and s["top1_agreement"] == pytest.approx(0.975)
    assert s["ppl_ratio"] == 1.024691 and s["ppl"] == 5.123456 and s["kl_truncated"] == 0.0


def test_modelfile_for_ollama():
    text = modelfile("model-q2_k.gguf", ctx=256, stop=["\n"], comment=["variant q2_k"])
    assert "FROM ./model-q2_k.gguf" in text and "PARAMETER num_ctx 256" in text and 'PARAMETER stop "\\n"' in text
    assert 'TEMPLATE """{{ .Prompt }}"""' in text and "PARAMETER temperature 0" in text


def test_gguf_variants_compose_and_map():
    from test_config import CONF

    from evalgate.compose import compose
    from evalgate.config import parse

    cfg = parse(compose(["preset=llamacpp"], CONF))
    assert cfg.engine["name"] == "llamacpp" and set(cfg.variants) >= {"q8_0", "q4_k_m", "q2_k", "fa_off", "draft"}
    assert cfg.eval["tasks"] == ["fx_add", "fx_copy", "fx_count"]
    assert {t.metric for t in cfg.thresholds} == {"fx_add/exact_match", "fx_copy/exact_match", "fx_count/exact_match"}
    with pytest.raises(ConfigError, match="baseline.quantization.method"):
        parse(compose(["preset=llamacpp", "baseline.quantization.method=q2_k"], CONF))


def test_served_gguf_files(tmp_path):
    """run@ serves quantize@<variant>'s GGUF when it wrote one, else the gguf stage's f16 (and its draft)."""
    from evalgate.models import served_model

    (tmp_path / "gguf").mkdir()
    conv = {"model": {"file": "model-f16.gguf"}, "draft": {"file": "draft-f16.gguf"}}
    (tmp_path / "gguf/gguf.json").write_text(json.dumps(conv))
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck/checkpoint.json").write_text(json.dumps({"checkpoint": True, "format": "gguf", "file": "model-q2_k.gguf"}))
    (tmp_path / "none").mkdir()
    (tmp_path / "none/checkpoint.json").write_text(json.dumps({"checkpoint": False}))
    base = ModelSpec(source="local", id="/m", draft="/d")
    m = served_model(base, parse_variant("v", {"quantization": {"method": "q2_k"}}), str(tmp_path / "ck"), str(tmp_path / "gguf"))
    assert m.gguf == str(tmp_path / "ck/model-q2_k.gguf") and m.draft_gguf == str(tmp_path / "gguf/draft-f16.gguf")
    m = served_model(base, parse_variant("v", {"kv_cache": {"dtype": "q8_0"}}), str(tmp_path / "none"), str(tmp_path / "gguf"))
    assert m.gguf == str(tmp_path / "gguf/model-f16.gguf") and m.id == "/m"
    with pytest.raises(ConfigError, match="no GGUF from quantize@v"):
        served_model(base, parse_variant("v", {"quantization": {"method": "q2_k"}}), str(tmp_path / "none"),
                     str(tmp_path / "gguf"))
    (tmp_path / "gguf/gguf.json").write_text(json.dumps({"model": None, "engine": "hf"}))
    assert served_model(base, parse_variant("v", {}), None, str(tmp_path / "gguf")) == base   # other engines: unchanged
