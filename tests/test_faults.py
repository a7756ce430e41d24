"""The fault matrix (issue 12; README, Failures): each fault injected for real where it can be on a CPU, and
what must follow: the outcome and exit code, the faulty variant's status.json with a one-line reason, the
tries (transient: retried up to faults.attempts; permanent: never), a finished variant's files byte for
byte as before (sha256), no orphan process, and for transient faults that DVC does not cache them.

The supervisor and the worker are tests/fault_worker.py (evalgate.faults.supervise around the real
evalgate.runner.run_serial with a fake engine whose server is a real HTTP server process)."""

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from evalgate import faults

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
POLICY = {"attempts": 3, "backoff_s": 0, "variant_timeout_s": 60, "memory_limit_mb": None}

# fault → (policy changes, exit code, status: ok / transient kind / "permanent", tries)
MATRIX = {
    "none": ({}, 0, "ok", 1),
    "server killed mid-profile, once": ({}, 0, "ok", 2),
    "server killed mid-eval, every time": ({}, 75, "server_died", 3),
    "server never healthy": ({"attempts": 2}, 75, "timeout", 2),
    "port already taken": ({"attempts": 2}, 75, "port", 2),
    "OOM at load (memory limit)": ({"attempts": 2, "memory_limit_mb": 2048}, 75, "oom", 2),
    "worker SIGKILLed (OOM killer), once": ({}, 0, "ok", 2),
    "variant hangs (timeout)": ({"attempts": 2, "variant_timeout_s": 4}, 75, "timeout", 2),
    "disk full on a results write": ({}, 75, "disk_full", 1),
    "engine refuses an option (permanent)": ({}, 0, "permanent", 1),
    "bad params (config error)": ({}, 2, None, 0),
}
MODES = {
    "none": "ok", "server killed mid-profile, once": "server_killed_mid_profile_once",
    "server killed mid-eval, every time": "server_killed_mid_eval", "server never healthy": "never_healthy",
    "port already taken": "port_taken", "OOM at load (memory limit)": "oom_at_load",
    "worker SIGKILLed (OOM killer), once": "sigkill_once", "variant hangs (timeout)": "hang",
    "disk full on a results write": "disk_full", "engine refuses an option (permanent)": "permanent",
    "bad params (config error)": "config_error",
}


def checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def orphans(token: str) -> list[str]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if token in " ".join(p.info["cmdline"] or []) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(" ".join(p.info["cmdline"]))
        except psutil.Error:
            pass
    return found


@pytest.fixture
def results(tmp_path):
    """results/ with a finished variant beside the one the fault hits."""
    done = tmp_path / "results" / "finished"
    done.mkdir(parents=True)
    (done / "status.json").write_text('{"ok": true}')
    (done / "metrics.json").write_text(json.dumps({"output_throughput": 123.0, "lmeval/t/acc/none": 0.9}))
    (done / "samples_t.jsonl").write_text('{"doc_id": 0, "acc": 1}\n')
    return tmp_path / "results"


def supervise(results: Path, mode: str, policy: dict, token: str, env_extra=None, **kw):
    env = {**os.environ, "FAULT_TOKEN": token, **(env_extra or {})}
    return subprocess.Popen([sys.executable, str(HERE / "fault_worker.py"), "supervise", mode,
                             str(results / "v"), json.dumps(policy), token],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.parametrize("launcher", ["popen", "fork"])
@pytest.mark.parametrize("fault", list(MATRIX))
def test_fault_matrix(fault, launcher, results):
    """Each fault, with the worker started as a fresh interpreter (`dvc repro`'s stage) and forked from a
    forkserver (evalgate.forkserver: `evalgate repro`'s CPU variants): the same outcome either way."""
    changes, want_rc, want, want_tries = MATRIX[fault]
    token = f"fault-{uuid.uuid4().hex}"
    before = checksums(results / "finished")
    env, held = {"FAULT_LAUNCHER": launcher}, None
    if fault == "port already taken":
        held = socket.socket()
        held.bind(("127.0.0.1", 0))
        held.listen()
        env["FAULT_PORT"] = str(held.getsockname()[1])
    t0 = time.time()
    try:
        p = supervise(results, MODES[fault], {**POLICY, **changes}, token, env)
        out, err = p.communicate(timeout=120)
    finally:
        if held:
            held.close()
    assert p.returncode == want_rc, (fault, out[-2000:], err[-2000:])
    assert checksums(results / "finished") == before           # nothing finished is lost or touched
    assert orphans(token) == [], fault                          # no server, no worker left running
    tries_file = results / "v.tries"
    assert (int(tries_file.read_text()) if tries_file.exists() else 0) == want_tries, (fault, out[-1500:])
    status = json.loads((results / "v" / "status.json").read_text()) if want_rc != 2 else None
    if want == "ok":
        assert status == {"ok": True}
        assert "time/total_s" in json.loads((results / "v" / "metrics.json").read_text())
    elif want == "permanent":
        assert status["ok"] is False and "transient" not in status and "int3" in status["error"]
        assert "\n" not in status["error"]
    elif want is not None:
        assert status["ok"] is False and status["transient"] == want, status
        assert "\n" not in status["error"]
        assert f"{want} after {want_tries} tr" in out               # the supervisor's one line
        if want == "disk_full":                                      # atomic writes: no half-written file
            assert not (results / "v" / "metrics.json").exists()
            assert not list((results / "v").glob(".*.tmp"))
    else:                                                            # config error: the worker's one line
        assert err.strip().count("\n") == 0 and err.startswith("config error: "), err
    if fault == "variant hangs (timeout)":
        assert time.time() - t0 < 40                                  # two tries of 4 s, then stopped


def test_sigint_mid_run_stops_every_process_and_is_not_final(results):
    token = f"fault-{uuid.uuid4().hex}"
    before = checksums(results / "finished")
    p = supervise(results, "hang", POLICY, token)
    deadline = time.time() + 60
    while not (results / "serving").exists():
        assert time.time() < deadline and p.poll() is None, p.communicate()
        time.sleep(0.1)
    assert orphans(token)                                         # the server is up
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, (out, err)
    assert orphans(token) == []
    status = json.loads((results / "v" / "status.json").read_text())
    assert status["ok"] is False and status["transient"] == "interrupted"
    assert checksums(results / "finished") == before


@pytest.mark.parametrize("error, kind", [
    (MemoryError(), "oom"), (OSError(28, "No space left on device"), "disk_full"),
    (OSError(98, "Address already in use"), "port"), (TimeoutError("vllm serve not healthy after 600 s"), "timeout"),
    (RuntimeError("vllm serve exited with -9 before it was healthy"), "server_died"),
    (RuntimeError("vllm serve exited with 1 before it was healthy: unrecognized arguments"), None),
    (ValueError("engine hf: quantization.method 'fp8' is not supported"), None),
    (RuntimeError("ValueError: No available memory for the cache blocks"), "oom"), (KeyboardInterrupt(), "interrupted"),
])
def test_classify(error, kind):
    assert faults.classify(error) == kind


def test_a_transient_failure_is_not_cached_by_dvc(tmp_path):
    """A stage that exits 75 (the supervisor's tries used up) leaves no dvc.lock entry: the next
    `dvc repro` runs it again, and then records it."""
    dvc = [sys.executable, "-m", "dvc"]
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  run:\n    cmd: python -c \"import pathlib, sys; f = pathlib.Path('n'); n = int(f.read_text()) + 1 "
        "if f.exists() else 1; f.write_text(str(n)); pathlib.Path('out').write_text('done'); sys.exit(75 if n == 1 else 0)\"\n"
        "    outs:\n      - out\n")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*dvc, "init", "-q"], cwd=tmp_path, check=True, env=env)
    first = subprocess.run([*dvc, "repro"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert first.returncode != 0
    assert not (tmp_path / "dvc.lock").exists() or "run" not in (tmp_path / "dvc.lock").read_text()
    second = subprocess.run([*dvc, "repro"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "n").read_text() == "2" and "run:" in (tmp_path / "dvc.lock").read_text()
    third = subprocess.run([*dvc, "repro"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert third.returncode == 0 and (tmp_path / "n").read_text() == "2"   # now cached


def test_two_repro_at_once_the_second_stops_with_one_line(tmp_path):
    from evalgate.repro import repro_lock

    with repro_lock(tmp_path):
        with pytest.raises(SystemExit) as e:
            with repro_lock(tmp_path):
                pass
    msg = str(e.value.code)
    assert "another `evalgate repro` is running" in msg and f"pid {os.getpid()}" in msg and "\n" not in msg
    with repro_lock(tmp_path):   # released: the next one runs
        pass


def test_a_forkserver_that_cannot_fork_falls_back_to_a_fresh_worker(tmp_path):
    """The forkserver only saves imports: when it fails, the worker starts as a fresh interpreter."""
    from evalgate.results import VariantResults

    class Broken:
        def start(self, cmd, fault_fd, memory_limit_mb, **kw):
            raise ConnectionRefusedError("the forkserver is gone")

    said = []
    marker = tmp_path / "ran"
    cmd = [sys.executable, "-c", f"open({str(marker)!r}, 'w').write('yes')"]
    rc = faults.supervise("v", cmd, VariantResults(tmp_path / "v"), POLICY, log=said.append, launcher=Broken())
    assert rc == 0 and marker.read_text() == "yes"
    assert any("no forked worker (ConnectionRefusedError" in line for line in said)


def test_a_helper_process_dies_with_the_process_that_started_it():
    """die_with_parent (the fixture's draft trainer's pool initializer): a stage killed mid-training leaves
    no trainer behind to write into its outputs later."""
    code = (
        "import multiprocessing as mp, sys, time\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from evalgate.faults import die_with_parent\n"
        "if __name__ == '__main__':\n"
        "    pool = ProcessPoolExecutor(1, mp_context=mp.get_context('spawn'), initializer=die_with_parent)\n"
        "    pool.submit(time.sleep, 120)\n"
        "    time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # the worker is up once the pool's process runs Python
            kids = [p for p in psutil.Process(parent.pid).children(recursive=True) if "python" in p.name().lower()]
            workers = [p for p in kids if "spawn_main" in " ".join(p.cmdline())]
            if workers:
                break
            time.sleep(0.2)
        assert workers, "the pool's worker never started"
        time.sleep(1.0)  # its initializer has run before it takes work (the sleep was submitted at once)
        parent.kill()
        parent.wait()
        gone, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, f"worker {alive[0].pid} outlived its killed parent"
    finally:
        parent.kill()
        for p in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                p.kill()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc")
def test_the_forkserver_does_not_hold_the_callers_output_open():
    """Whoever reads a run's output to its end waits for every process that holds it: the forkserver (and
    the resource tracker it starts) must not inherit the caller's stdout/stderr, which outlived the run by
    1-2 s (H200 and CPU, 2026-11-27). A forked worker's output still reaches the caller."""
    code = r"""
import os, sys
sys.path.insert(0, os.getcwd())
from multiprocessing import forkserver, resource_tracker
from evalgate.forkserver import Launcher
lch = Launcher(preload=[])
mine = {os.readlink(f"/proc/self/fd/{fd}") for fd in (1, 2)}
for pid in (forkserver._forkserver._forkserver_pid, resource_tracker._resource_tracker._pid):
    held = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    print("holds" if held & mine else "free", flush=True)
w = lch.start([sys.executable, "-c", "print('from the worker')"], None, None)
print("worker exit", w.wait(60), flush=True)
"""
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stdout.split()
    assert p.stdout.splitlines()[:2] == ["free", "free"], p.stdout
    assert "from the worker" in p.stdout and "exit 0" in p.stdout, lines
