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
from evalgate.engines.vllm import serve_args, server_env, start_phases

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


def test_engine_args_speculative_config_is_merged_into_the_one_flag():
    a = args_of({"speculative": {"method": "draft", "num_tokens": 4},
                 "engine_args": {"speculative_config": {"disable_padded_drafter_batch": True}, "max_num_seqs": 8}})
    assert a.count("--speculative-config") == 1
    assert json.loads(a[a.index("--speculative-config") + 1]) == {
        "method": "draft_model", "model": "/d", "num_speculative_tokens": 4, "disable_padded_drafter_batch": True}
    assert a[a.index("--max-num-seqs") + 1] == "8"
    # without a speculative method it is the user's own speculative config, passed as given
    a = args_of({"engine_args": {"speculative_config": {"method": "ngram", "num_speculative_tokens": 2}}})
    assert json.loads(a[a.index("--speculative-config") + 1]) == {"method": "ngram", "num_speculative_tokens": 2}


def test_prequantized_checkpoints_add_no_flag():
    for m in ("w4a16", "w8a8", "checkpoint"):
        q = {"method": m, **({"path": "/ckpt"} if m == "checkpoint" else {})}  # a checkpoint needs its path
        assert "--quantization" not in args_of({"quantization": q})


@pytest.mark.parametrize("spec, msg", [
    ({"quantization": {"method": "int2"}}, "quantization.method"),
    ({"kv_cache": {"dtype": "int4"}}, "kv_cache.dtype"),
])
def test_check_refuses(spec, msg, tmp_path):
    with pytest.raises(VariantUnsupported, match=msg):
        get_engine("vllm", {}).check(ModelSpec(source="local", id=str(tmp_path)), parse_variant("v", spec))


def test_engine_args_are_checked_against_vllms_source_without_importing_it(tmp_path, monkeypatch):
    """EngineArgs' fields come from vLLM's arg_utils.py read as source (its import cost ≈ 10 s before a
    GPU run): a known key passes without the import, an unknown one is refused with one line."""
    from evalgate.engines import vllm as adapter

    pkg = tmp_path / "vllm"
    (pkg / "engine").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('importing vllm is what this avoids')\n")
    (pkg / "engine" / "arg_utils.py").write_text(
        "from dataclasses import dataclass\n\n@dataclass\nclass EngineArgs:\n    max_num_seqs: int = 128\n"
        "    enforce_eager: bool = False\n    def create(self):\n        x: int = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    adapter.engine_arg_names.cache_clear()
    try:
        assert adapter.engine_arg_names() == {"max_num_seqs", "enforce_eager"}
        engine = get_engine("vllm", {"engine_args": {"max_num_seqs": 64}})
        engine.check(ModelSpec(source="local", id="/m"), parse_variant("v", {"engine_args": {"enforce_eager": True}}))
        with pytest.raises(VariantUnsupported, match="engine_args.max_seqs is not a vLLM engine argument"):
            engine.check(ModelSpec(source="local", id="/m"), parse_variant("v", {"engine_args": {"max_seqs": 8}}))
    finally:
        adapter.engine_arg_names.cache_clear()


def test_memory_share_and_context_flags():
    a = serve_args("/m", None, parse_variant("v", {}), {"seed": 0, "max_model_len": 4096},
                   {"kv_cache_memory_bytes": 4 * 2**30, "gpu_memory_utilization": 0.0912345})
    assert " ".join(a[:7]) == "/m --served-model-name model --seed 0 --gpu-memory-utilization 0.09123"
    assert a[a.index("--kv-cache-memory-bytes") + 1] == str(4 * 2**30) and "--max-model-len" in a


def test_memory_need_counts_weights_kv_and_overhead(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m/model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "d").mkdir()
    (tmp_path / "d/model.safetensors").write_bytes(b"x" * 100)
    eng = get_engine("vllm", {"kv_cache_memory_gb": 2, "server_overhead_gb": 1})
    model = ModelSpec(source="local", id=str(tmp_path / "m"), draft=str(tmp_path / "d"))
    base = eng.memory_need(model, parse_variant("v", {}))
    assert base == {"weights": 1000, "kv_cache_memory_bytes": 2 * 2**30, "overhead": 2**30, "total": 1000 + 3 * 2**30}
    assert eng.memory_need(model, parse_variant("v", {"quantization": {"method": "fp8"}}))["weights"] == 500
    assert eng.memory_need(model, parse_variant("v", {"speculative": {"method": "draft"}}))["weights"] == 1100


def test_start_phases_from_the_server_log():
    log = "\n".join([
        "INFO 11-25 10:00:00 [api_server.py:1] vLLM API server version 0.24.0",
        "INFO 11-25 10:00:30 [gpu_model_runner.py:1] Starting to load model /m...",
        "INFO 11-25 10:00:33 [gpu_model_runner.py:2] Model loading took 0.58 GiB memory and 2.5 seconds",
        "INFO 11-25 10:00:45 [monitor.py:3] torch.compile took 11.20 s in total",
        "INFO 11-25 10:00:50 [gpu_model_runner.py:4] Graph capturing finished in 5 secs, took 0.10 GiB",
        "INFO 11-25 10:01:02 [api_server.py:5] Starting vLLM API server 0 on http://127.0.0.1:8000"])
    assert start_phases(log) == {"imports_s": 30, "weights_s": 3, "compile_s": 12, "cuda_graphs_s": 5, "api_ready_s": 12}


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
        import urllib.request

        body = json.dumps({"model": "model", "prompt": "hi", "max_tokens": 4}).encode()
        with urllib.request.urlopen(urllib.request.Request(f"{ep.base_url}/v1/completions", body)) as r:
            assert b"completion_tokens" in r.read()
        stats = ep.stats()
        ep.reset_cache()   # the profile empties the prefix cache before each level (a dev-mode route)
        assert (tmp_path / "child.pid.resets").read_text() == "reset\n"
        attached = engine.attach(ep.record())      # what a quality worker in another process gets
        assert attached.base_url == ep.base_url and attached.model_path == ep.model_path
        child = int((tmp_path / "child.pid").read_text())
        assert Path(f"/proc/{child}").exists()
    assert stats["mem_weights_mb"] == 256 and stats["kv_cache_tokens"] == 12345
    cmd = json.loads((tmp_path / "server_cmd.json").read_text())
    assert (tmp_path / "server.log").exists() and cmd
    hosts = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--host"]
    assert hosts[-1] == "127.0.0.1" and ep.base_url.startswith("http://127.0.0.1:")   # never on other interfaces
    assert not _alive(child), "the server's child process outlived the server"


def test_the_engine_core_is_forked_unless_the_environment_says_otherwise(monkeypatch):
    """`vllm serve` would spawn its engine core, which then imports everything again (20 s on an H100)."""
    monkeypatch.delenv("VLLM_WORKER_MULTIPROC_METHOD", raising=False)
    env = server_env()
    assert env["VLLM_WORKER_MULTIPROC_METHOD"] == "fork" and env["VLLM_SERVER_DEV_MODE"] == "1"
    monkeypatch.setenv("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    assert server_env()["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"


def test_every_server_shares_one_triton_cache_unless_the_environment_names_one(monkeypatch, tmp_path):
    """Left to Inductor, a compiling server's runtime kernels go to its configuration's own folder and the
    next server compiles them again (14 s a start on an H200): every server gets Triton's default folder
    by name; a TRITON_HOME or TRITON_CACHE_DIR of the user's wins."""
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    monkeypatch.delenv("TRITON_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert server_env()["TRITON_CACHE_DIR"] == str(tmp_path / ".triton" / "cache")
    monkeypatch.setenv("TRITON_HOME", str(tmp_path / "th"))
    assert server_env()["TRITON_CACHE_DIR"] == str(tmp_path / "th" / ".triton" / "cache")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "mine"))
    assert server_env()["TRITON_CACHE_DIR"] == str(tmp_path / "mine")


@pytest.mark.parametrize("mode, err", [("crash", "exited with 3"), ("hang", "not healthy after")])
def test_start_failures_are_clear(model_dir, tmp_path, monkeypatch, mode, err):
    monkeypatch.setenv("FAKE_VLLM_PIDFILE", str(tmp_path / "child.pid"))
    monkeypatch.setenv("FAKE_VLLM_MODE", mode)
    engine = get_engine("vllm", {"cli": FAKE, "start_timeout_s": 3})
    with pytest.raises((RuntimeError, TimeoutError), match=err):
        with engine.serve(model_dir, parse_variant("v", {}), tmp_path):
            pass
    assert not _alive(int((tmp_path / "child.pid").read_text()))


def test_stop_waits_for_the_whole_group_then_kills_what_is_left(tmp_path):
    """A server whose child takes a moment to exit on SIGTERM (vLLM's engine core freeing the GPU) gets that
    moment, not a SIGKILL as soon as the leader is gone; a child that ignores SIGTERM is killed after the grace
    time; a child whose parent died already is found by its group and stopped too; a group held still (SIGSTOP:
    the scheduler's idle neighbours during a profile) is continued, so it stops as cleanly as a running one."""
    import subprocess

    from evalgate.engines.vllm import hold_process_group, stop_process_group

    script = tmp_path / "group.py"
    script.write_text("""
import os, signal, sys, time
mode = sys.argv[1]
if os.fork() == 0:                                   # the child: slow to stop, or deaf to SIGTERM
    if mode in ("slow", "held"):
        signal.signal(signal.SIGTERM, lambda *_: (time.sleep(1), open(sys.argv[2], "w").write("clean"), os._exit(0)))
    else:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    open(sys.argv[2] + ".pid", "w").write(str(os.getpid()))
    while True:
        time.sleep(0.1)
if mode == "orphan":
    sys.exit(0)                                      # the leader is gone before the stop
time.sleep(3600)
""")
    for mode, grace in (("slow", 10), ("deaf", 1), ("orphan", 1), ("held", 10)):
        mark = tmp_path / mode
        proc = subprocess.Popen([sys.executable, str(script), mode, str(mark)], start_new_session=True)
        for _ in range(200):   # the file exists before its pid is written: wait for the content
            if Path(f"{mark}.pid").exists() and Path(f"{mark}.pid").read_text().strip():
                break
            time.sleep(0.05)
        child = int(Path(f"{mark}.pid").read_text())
        if mode == "held":
            hold_process_group(proc, True)
            time.sleep(0.2)
            assert Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
        t0 = time.monotonic()
        stop_process_group(proc, grace_s=grace)
        took = time.monotonic() - t0
        assert not _alive(child), mode
        if mode in ("slow", "held"):
            assert mark.read_text() == "clean" and took < 5      # it finished its own stop, then the wait ended
        if mode == "deaf":
            assert 1 <= took < 5                                  # killed after the grace time


def test_draft_server_prompt_logprobs_compared_per_prompt():
    """bench/spec_logprobs.py's measure: the largest top-1 log-prob difference per prompt; a prompt
    whose positions differ in number is a difference outright."""
    import numpy as np

    from bench.spec_logprobs import differences, summary

    ref = [np.array([-1.0, -2.0]), np.array([-0.5] * 3), np.array([-3.0])]
    got = [np.array([-1.0, -2.01]), np.array([-0.5, -1.4, -0.5]), np.array([-3.0, -1.0])]
    d = differences(ref, got)
    assert np.allclose(d[:2], [0.01, 0.9]) and d[2] == np.inf
    s = summary(d, [100, 600, 700], tol=0.1)
    assert (s["prompts"], s["differ"], s["differ_at_most_512_tokens"], s["differ_over_512_tokens"]) == (3, 2, 0, 2)


def test_warm_machine_inspects_the_models_architectures_once_it_exists(tmp_path, monkeypatch):
    """vLLM's model-info cache filled once, beside the inputs: it waits for the model's config.json (the
    fixture writes it before training), passes its architectures to vLLM's registry, and does nothing where
    the cache already exists or the model is a hub id. A fake `vllm` registry records the call."""
    import threading

    fake = tmp_path / "site" / "vllm" / "model_executor" / "models"
    fake.mkdir(parents=True)
    for d in (tmp_path / "site" / "vllm", fake.parent, fake):
        (d / "__init__.py").write_text("")
    seen = tmp_path / "inspected.txt"
    (fake / "registry.py").write_text(
        "class _R:\n    def _try_inspect_model_cls(self, a):\n"
        f"        open({str(seen)!r}, 'a').write(a + '\\n')\nModelRegistry = _R()\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "cache"))
    engine = get_engine("vllm", {})
    model = tmp_path / "model"
    model.mkdir()
    later = threading.Timer(1.0, lambda: (model / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]})))
    later.start()
    said = engine.warm_machine(ModelSpec(source="local", id=str(model)), wait_s=30)
    assert said.startswith("model info for LlamaForCausalLM cached in") and seen.read_text() == "LlamaForCausalLM\n"
    assert engine.warm_machine(ModelSpec(source="hub", id="org/model"), wait_s=0) is None
    (tmp_path / "cache" / "modelinfos").mkdir(parents=True)
    (tmp_path / "cache" / "modelinfos" / "x.json").write_text("{}")
    assert engine.warm_machine(ModelSpec(source="local", id=str(model)), wait_s=0) is None   # cached already
    assert seen.read_text() == "LlamaForCausalLM\n"
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "cache2"))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "nothing"))   # no vLLM at all: said, not raised
    assert "not cached (exit 1: ModuleNotFoundError" in engine.warm_machine(ModelSpec(source="local", id=str(model)))


def test_warm_machine_starts_the_variant_with_random_weights_while_the_model_trains(tmp_path, monkeypatch):
    """While the model folder has no weights yet (the fixture trains them), the warm-up is the variant's own
    server started with random weights (vLLM keys its compile cache on the configuration, with the same
    KV-cache bytes the scheduler gives it), up and then stopped; `stop` ends it at once, server and all."""
    import threading

    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "cache"))
    monkeypatch.setenv("FAKE_VLLM_PIDFILE", str(tmp_path / "child.pid"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (model / "tokenizer_config.json").write_text("{}")
    engine = get_engine("vllm", {"cli": FAKE, "start_timeout_s": 30, "kv_cache_memory_gb": 2})
    said = engine.warm_machine(ModelSpec(source="local", id=str(model)), parse_variant("baseline", {}), tmp_path / "w")
    assert "baseline server with random weights up in" in said
    cmd = json.loads((tmp_path / "w" / "server_cmd.json").read_text())
    assert cmd[cmd.index("--load-format") + 1] == "dummy"
    assert cmd[cmd.index("--kv-cache-memory-bytes") + 1] == str(2 * 2**30)   # the scheduled server's own
    assert not _alive(int((tmp_path / "child.pid").read_text()))

    monkeypatch.setenv("FAKE_VLLM_MODE", "hang")   # never healthy: the caller's stop ends it
    stop, out = threading.Event(), []
    t = threading.Thread(target=lambda: out.append(engine.warm_machine(
        ModelSpec(source="local", id=str(model)), parse_variant("baseline", {}), tmp_path / "w2", stop)))
    t.start()
    while not (tmp_path / "w2" / "server.pid").exists():
        time.sleep(0.1)
    stop.set()
    t.join(timeout=20)
    assert not t.is_alive() and out[0].startswith("warm-up server stopped before it was up")
    assert not _alive(int((tmp_path / "child.pid").read_text()))

    monkeypatch.setenv("FAKE_VLLM_MODE", "crash")   # a failed warm-up server: the inspection alone, both said
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "nothing"))   # (no vLLM here: that fails too, and says so)
    said = engine.warm_machine(ModelSpec(source="local", id=str(model)), parse_variant("baseline", {}), tmp_path / "w3")
    assert said.startswith("warm-up server failed (RuntimeError: vllm serve (warm-up, dummy weights) exited with 3")
    assert "; model info for LlamaForCausalLM not cached (exit 1: ModuleNotFoundError" in said

    (model / "pytorch_model.bin").write_bytes(b"")   # weights there (any format vLLM loads): no server, the inspection
    said = engine.warm_machine(ModelSpec(source="local", id=str(model)), parse_variant("baseline", {}), tmp_path / "w4")
    assert said.startswith("model info for LlamaForCausalLM not cached") and not (tmp_path / "w4").exists()


def test_the_card_asked_about_is_the_one_cuda_visible_devices_names(monkeypatch):
    """NVML numbers every card of the host; a run pinned to card 1 must read card 1's free memory (and
    idle share), not card 0's: each entry of CUDA_VISIBLE_DEVICES is an NVML index or a UUID."""
    import sys
    import types

    from evalgate.engines.vllm import VLLMEngine

    cards = {0: (10, 80), 1: (70, 80), "GPU-1234": (50, 80)}
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: cards[i] if i in cards else (_ for _ in ()).throw(KeyError(i)),
        nvmlDeviceGetHandleByUUID=lambda u: cards[u],
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(free=h[0], total=h[1]))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert VLLMEngine.device_memory() == (10, 80)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    assert VLLMEngine.device_memory() == (70, 80)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1234")
    assert VLLMEngine.device_memory() == (50, 80)
    for hidden in ("", "-1", "7"):     # no card visible: no capacity figure, never another card's
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert VLLMEngine.device_memory() is None


def test_the_sm_clock_is_read_from_the_handle_and_absent_without_one(monkeypatch):
    import sys
    import types

    from evalgate.gpu import sm_clock_mhz

    fake = types.SimpleNamespace(NVML_CLOCK_SM=1, nvmlDeviceGetClockInfo=lambda h, kind: {("card", 1): 1755}[(h, kind)])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert sm_clock_mhz("card") == 1755.0
    assert sm_clock_mhz(None) is None
    assert sm_clock_mhz("other card") is None   # NVML refuses: no figure, no failure
