"""bench/server_start.py's cache listing, on CPU: what a start added to each cache folder, and the Triton
kernels among it by name (what tells whether the next start compiled the same kernels again)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import server_start  # noqa: E402


def test_a_start_s_new_cache_files_are_counted_by_folder_and_its_triton_kernels_named(tmp_path):
    triton, vllm = tmp_path / ".triton" / "cache", tmp_path / "vllm"
    (triton / "KEYOLD").mkdir(parents=True)
    (triton / "KEYOLD" / "old_kernel.json").write_text(json.dumps({"name": "old_kernel", "num_warps": 4}))
    vllm.mkdir()
    before = server_start.snapshot([triton, vllm])
    (triton / "KEYNEW").mkdir()
    (triton / "KEYNEW" / "_gumbel_sample_kernel.json").write_text(json.dumps({"name": "_gumbel_sample_kernel", "num_warps": 4}))
    (triton / "KEYNEW" / "_gumbel_sample_kernel.cubin").write_bytes(b"\0")
    (triton / "KEYNEW" / "__grp__x.json").write_text(json.dumps({"child_paths": {}}))   # a group file: no name
    (vllm / "modelinfos").mkdir()
    (vllm / "modelinfos" / "llama.json").write_text(json.dumps({"name": "LlamaForCausalLM"}))   # not a kernel's
    got = server_start.added(before, server_start.snapshot([triton, vllm]))
    assert got["files"] == {str(triton): 3, str(vllm): 1}
    assert got["triton_kernels"] == ["_gumbel_sample_kernel (KEYNEW)"]


def test_the_cache_folders_follow_the_environment(tmp_path):
    roots = server_start.cache_roots({"TRITON_CACHE_DIR": str(tmp_path / "t"), "VLLM_CACHE_ROOT": str(tmp_path / "v")})
    assert tmp_path / "t" in roots and tmp_path / "v" in roots and Path.home() / ".triton" in roots


def test_the_out_file_appended_after_vllms_arguments_is_the_benchs(monkeypatch, tmp_path):
    """`gpu/session.sh bench NAME server_start.py MODEL -- --max-num-seqs 256` appends `--out F` at the end."""
    seen = []
    monkeypatch.setattr(server_start, "one_start", lambda model, extra, env, port, timeout: seen.append(extra) or {
        "healthy_s": 1.0, "completion": "15", "first_line_s": 0.1, "longest_gaps": [], "lines": []})
    monkeypatch.setattr(server_start, "cache_roots", lambda env: [])
    out = tmp_path / "bench.json"
    assert server_start.main(["m", "--runs", "1", "--first-dummy", "--", "--max-num-seqs", "256", "--out", str(out)]) == 0
    assert seen == [["--max-num-seqs", "256", "--load-format", "dummy"]]
    assert json.loads(out.read_text())["extra"] == ["--max-num-seqs", "256"]


def test_the_server_starts_with_the_pipelines_environment(monkeypatch, tmp_path):
    """The bench times a start as the pipeline makes it: evalgate's server_env (the engine core forked, one
    Triton cache folder named), the bench's DEBUG logging and `--env` over it; the JSON says what was set."""
    seen = []
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    monkeypatch.delenv("VLLM_WORKER_MULTIPROC_METHOD", raising=False)
    monkeypatch.setattr(server_start, "one_start", lambda model, extra, env, port, timeout: seen.append(env) or {
        "healthy_s": 1.0, "completion": "15", "first_line_s": 0.1, "longest_gaps": [], "lines": []})
    monkeypatch.setattr(server_start, "cache_roots", lambda env: [])
    out = tmp_path / "bench.json"
    assert server_start.main(["m", "--runs", "1", "--env", "VLLM_FOO=1", "--out", str(out)]) == 0
    env = seen[0]
    assert env["VLLM_WORKER_MULTIPROC_METHOD"] == "fork" and env["TRITON_CACHE_DIR"].endswith(".triton/cache")
    assert env["VLLM_LOGGING_LEVEL"] == "DEBUG" and env["VLLM_FOO"] == "1" and env["PATH"] == os.environ["PATH"]
    said = json.loads(out.read_text())["env"]
    assert said["TRITON_CACHE_DIR"] == env["TRITON_CACHE_DIR"] and "PATH" not in said
