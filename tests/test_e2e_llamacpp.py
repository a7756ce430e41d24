"""preset=llamacpp end to end on the tiny fixture: `dvc repro` builds nothing new (the tools are cached
per machine), converts the fixture to GGUF F16, quantizes one variant to Q8_0 with llama-quantize, serves
it, the baseline and a Q8_0 KV-cache variant with llama-server, evaluates through it, scores fidelity with
llama-perplexity and gates both variants against the baseline. Needs llama.cpp's tools (`make llamacpp`;
`make test` builds them first)."""
import json
import re
import sys

import pytest
import yaml
from test_e2e import copy_project, mlflow_runs, sh

from evalgate import gguf

try:
    gguf.tools(build=False)
except gguf.ToolsMissing as e:
    pytest.skip(f"{e}", allow_module_level=True)

TINY = ["preset=llamacpp", "fixture=tiny", "load=tiny", "workload.max_tokens=16", "variant=[q8_0,kv_q8_0]", "eval.limit=24",
        "engine.fidelity.ctx_size=32", "engine.llama_bench.repetitions=1",
        # one head of 32: llama.cpp quantizes a KV cache in blocks of 32 values of one head (tiny's 2 × 16 cannot)
        "fixture.target.num_heads=1",
        # a variant llama.cpp cannot run: rejected with its reason before anything loads, the others still run
        "+variants.kv_fp8.kv_cache.dtype=fp8"]


@pytest.fixture(scope="module")
def proj(tmp_path_factory):
    d = tmp_path_factory.mktemp("e2e_llamacpp") / "proj"
    copy_project(d, TINY)
    return d, sh(["dvc", "repro"], d).stdout


def test_gguf_files_and_modelfiles(proj):
    d, _ = proj
    info = json.loads((d / "gguf/gguf.json").read_text())
    assert info["model"]["pre_tokenizer"] == "smollm" and (d / "gguf" / info["model"]["file"]).exists()
    assert (d / "gguf" / info["draft"]["file"]).exists()
    ck = json.loads((d / "checkpoints/q8_0/checkpoint.json").read_text())
    assert ck["format"] == "gguf" and ck["type"] == "Q8_0" and (d / "checkpoints/q8_0" / ck["file"]).exists()
    for folder, file in (("gguf", info["model"]["file"]), ("checkpoints/q8_0", ck["file"])):
        assert f"FROM ./{file}" in (d / folder / "Modelfile").read_text()


def test_variant_through_the_gate(proj):
    d, _ = proj
    for v in ("baseline", "q8_0", "kv_q8_0"):
        assert json.loads((d / f"results/{v}/status.json").read_text()) == {"ok": True}
        m = json.loads((d / f"results/{v}/metrics.json").read_text())
        for k in ("median_ttft_ms", "p99_e2el_ms", "output_throughput", "c1/median_e2el_per_token_ms",
                  "lmeval/fx_add/exact_match/none", "lmeval/fx_count/exact_match/none", "mem_peak_mb",
                  "llama_bench/tg_tok_s", "gguf_bits_per_weight", "time/eval_s"):
            assert k in m, (v, k)
        assert "lmeval/fx_recall/acc/none" not in m     # multiple_choice: not evaluable through llama-server
        assert (d / f"results/{v}/server.log").exists()
    q8 = json.loads((d / "results/q8_0/metrics.json").read_text())
    assert q8["fidelity/kl_truncated"] == 0.0 and q8["fidelity/kl_mean"] >= 0 and "fidelity/ppl_ratio" in q8
    assert q8["gguf_bits_per_weight"] < json.loads((d / "results/baseline/metrics.json").read_text())["gguf_bits_per_weight"]
    kv = json.loads((d / "results/kv_q8_0/metrics.json").read_text())
    assert re.search(r"K \(q8_0\).*V \(q8_0\)", (d / "results/kv_q8_0/server.log").read_text())
    assert kv["flash_attn"] == 1.0 and "fidelity/kl_mean" in kv   # a quantized V cache needs flash attention
    gate = json.loads((d / "reports/gate.json").read_text())
    assert gate["variants"]["baseline"]["verdict"] == "accept"
    for v in ("q8_0", "kv_q8_0"):
        assert gate["variants"][v]["verdict"] in ("accept", "reject") and gate["variants"][v]["checks"]
    bad = gate["variants"]["kv_fp8"]
    assert bad["verdict"] == "reject" and "kv_cache.dtype 'fp8'" in bad["reason"]
    summary = (d / "reports/summary.md").read_text()
    assert "on `llamacpp`" in summary and "## llama.cpp: weights, llama-bench, llama-perplexity" in summary
    children = [r.info.run_name for r in mlflow_runs(d) if "mlflow.parentRunId" in r.data.tags]
    assert sorted(children) == ["baseline", "kv_fp8", "kv_q8_0", "q8_0"]


def test_noop_repro(proj):
    d, _ = proj
    assert "Running stage" not in sh(["dvc", "repro"], d).stdout


def test_evalgate_repro_runs_only_the_changed_variant_and_commits_it(proj):
    """`evalgate repro` on llama.cpp, whose servers cannot share a device: the stale variant's stage command
    runs from there (its supervised worker), then gate and report in-process and one `dvc commit`; DVC
    then finds everything up to date, and a second run has nothing to do."""
    d, _ = proj
    params = yaml.safe_load((d / "params.yaml").read_text())
    params["variants"]["kv_q8_0"]["kv_cache"]["dtype"] = "q4_0"
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh([sys.executable, "-m", "evalgate", "repro"], d).stdout
    assert "stale: run@kv_q8_0 [+" in out and "running 1 variant(s) one at a time [+" in out
    assert "5/5 dvc commit run@kv_q8_0 gate report" in out
    assert re.search(r"K \(q4_0\).*V \(q4_0\)", (d / "results/kv_q8_0/server.log").read_text())
    assert "up to date" in sh([sys.executable, "-m", "dvc", "status"], d).stdout
    again = sh([sys.executable, "-m", "evalgate", "repro"], d).stdout
    assert "stale: none" in again and "Running stage" not in again
