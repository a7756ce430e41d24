"""The vllm adapter on CPU: variant → `vllm serve` flags, and the server lifecycle against a fake
server (health wait, streamed timing, log facts, no orphan process after stop, clear start errors)."""
import json
import sys
import time
from pathlib import Path

import pytest

from evalgate.config import ModelSpec, parse_variant
from evalgate.engines import get_engine
from evalgate.engines.base import VariantUnsupported
from evalgate.engines.vllm import parse_prometheus, serve_args

FAKE = [sys.executable, str(Path(__file__).with_name("fake_vllm.py"))]


def args_of(spec, **opts):
    return serve_args("/m", "/d", parse_variant("v", spec), {"seed": 1, **opts})


def test_baseline_args():
    assert args_of({}) == ["/m", "--served-model-name", "model", "--seed", "1", "--gpu-memory-utilization", "0.85"]


@pytest.mark.parametrize("spec, expect", [
    ({"quantization": {"method": "fp8"}}, ["--quantization", "fp8"]),
    ({"kv_cache": {"dtype": "fp8"}}, ["--kv-cache-dtype", "fp8"]),
    ({"dtype": "bfloat16"}, ["--dtype", "bfloat16"]),
    ({"engine_args": {"max_num_seqs": 64, "enable_prefix_caching": True, "enforce_eager": False}},
     ["--max-num-seqs", "64", "--enable-prefix-caching", "--no-enforce-eager"]),
])
def test_variant_fields_map_to_flags(spec, expect):
    a = args_of(spec)
    assert " ".join(expect) in " ".join(a)


def test_speculative_configs():
    a = args_of({"speculative": {"method": "ngram", "num_tokens": 4}})
    assert json.loads(a[a.index("--speculative-config") + 1]) == {
        "method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4, "prompt_lookup_min": 1}
    a = args_of({"speculative": {"method": "draft", "num_tokens": 3}})
    assert json.loads(a[a.index("--speculative-config") + 1]) == {
        "method": "draft_model", "model": "/d", "num_speculative_tokens": 3}


def test_prequantized_checkpoints_add_no_flag():
    for m in ("w4a16", "w8a8", "checkpoint"):
        assert "--quantization" not in args_of({"quantization": {"method": m}})


@pytest.mark.parametrize("spec, msg", [
    ({"quantization": {"method": "int2"}}, "quantization.method"),
    ({"kv_cache": {"dtype": "int4"}}, "kv_cache.dtype"),
])
def test_check_refuses(spec, msg, tmp_path):
    with pytest.raises(VariantUnsupported, match=msg):
        get_engine("vllm", {}).check(ModelSpec(source="local", id=str(tmp_path)), parse_variant("v", spec))


def test_prometheus_parsing():
    text = "# HELP x\nvllm:a_total{model=\"m\"} 3.0\nvllm:a_total{model=\"n\"} 2\nvllm:b 1e3\nvllm:c NaN\n"
    assert parse_prometheus(text) == {"vllm:a_total": 5.0, "vllm:b": 1000.0}


@pytest.fixture
def model_dir(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m/config.json").write_text("{}")
    return ModelSpec(source="local", id=str(tmp_path / "m"))


def _alive(pid: int) -> bool:
    """Still running 2 s after the stop (SIGKILL lands asynchronously; a killed child whose parent
    died may linger as a zombie until PID 1 reaps it, which counts as stopped)."""
    for _ in range(20):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return False
        if state in ("Z", "X"):
            return False
        time.sleep(0.1)
    return True


def test_lifecycle_serves_then_leaves_no_orphan(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_PIDFILE", str(tmp_path / "child.pid"))
    engine = get_engine("vllm", {"cli": FAKE, "start_timeout_s": 30})
    with engine.serve(model_dir, parse_variant("v", {}), tmp_path) as ep:
        g = ep.generate("hi", 5)
        stats = ep.stats()
        child = int((tmp_path / "child.pid").read_text())
        assert Path(f"/proc/{child}").exists()
    assert len(g.token_times) == 5 and g.token_times[0] == g.token_times[1]  # 2 tokens in the first chunk
    assert stats["mem_weights_mb"] == 256 and stats["kv_cache_tokens"] == 12345
    assert (tmp_path / "server.log").exists() and json.loads((tmp_path / "server_cmd.json").read_text())
    assert not _alive(child), "the server's child process outlived the server"


@pytest.mark.parametrize("mode, err", [("crash", "exited with 3"), ("hang", "not healthy after")])
def test_start_failures_are_clear(model_dir, tmp_path, monkeypatch, mode, err):
    monkeypatch.setenv("FAKE_VLLM_PIDFILE", str(tmp_path / "child.pid"))
    monkeypatch.setenv("FAKE_VLLM_MODE", mode)
    engine = get_engine("vllm", {"cli": FAKE, "start_timeout_s": 3})
    with pytest.raises((RuntimeError, TimeoutError), match=err):
        with engine.serve(model_dir, parse_variant("v", {}), tmp_path):
            pass
    assert not _alive(int((tmp_path / "child.pid").read_text()))
