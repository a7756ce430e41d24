"""The fault matrix's processes (tests/test_faults.py), run as scripts.

`python fault_worker.py supervise MODE OUT POLICY_JSON`: the supervisor, evalgate.faults.supervise, as the
stage's process runs it, with this file's worker as the variant's work (FAULT_LAUNCHER=fork: the worker is
forked from a forkserver, as `evalgate repro` starts the CPU variants' workers).

`python fault_worker.py work MODE OUT`: a variant's worker: the real evalgate.runner.run_serial (its error
handling, status.json, the fault pipe to the supervisor, the real finish) around a fake engine whose
"server" is a real process (an HTTP server on 127.0.0.1) and whose quality and profile phases are real
HTTP requests to it; MODE injects one fault for real (a killed server, a port taken, an allocation past
the memory limit, a file size limit on the results writes, a hang, a signal). Every process it starts
carries $FAULT_TOKEN on its command line, so the test can find orphans.
"""

import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import types
import urllib.request
from pathlib import Path

TOKEN = os.environ.get("FAULT_TOKEN", "fault-matrix")
SERVER = ("import sys, functools, http.server as h; h.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), "
          "functools.partial(h.SimpleHTTPRequestHandler, directory=sys.argv[2])).serve_forever()")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Endpoint:
    def __init__(self, proc, port):
        self.proc, self.port = proc, port
        self.info = types.SimpleNamespace(start_seconds=0.0)

    def get(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=5) as r:
            return r.status


@contextlib.contextmanager
def serve(mode: str, tries: int, state: Path):
    if mode == "port_taken":  # the port the harness holds (EADDRINUSE, for real)
        s = socket.socket()
        s.bind(("127.0.0.1", int(os.environ["FAULT_PORT"])))
    if mode == "oom_at_load":  # the weights do not fit under faults.memory_limit_mb (RLIMIT_AS)
        bytearray(8 * 2**30)
    if mode == "permanent":
        raise ValueError("engine fake: quantization.method 'int3' is not supported")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(state.parent), TOKEN],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + (1.5 if mode == "never_healthy" else 30)
        ep = Endpoint(proc, port if mode != "never_healthy" else free_port())  # never_healthy: nobody listens
        while True:
            try:
                ep.get()
                break
            except OSError:
                if time.time() > deadline:
                    raise TimeoutError("fake serve not healthy after 1.5 s") from None
                time.sleep(0.1)
        (state.parent / "serving").write_text(str(proc.pid))
        yield ep
    finally:
        proc.kill()
        proc.wait()


def work(mode: str, out: Path) -> int:
    from evalgate import runner
    from evalgate.config import parse
    from evalgate.results import VariantResults

    state = out.parent / f"{out.name}.tries"
    tries = int(state.read_text()) + 1 if state.exists() else 1
    state.write_text(str(tries))
    once = mode.endswith("_once")
    fault = mode.removesuffix("_once") if (not once or tries == 1) else "ok"

    cfg = parse({"model": {"source": "local", "id": "m"}, "engine": {"name": "hf"},
                 "workload": {"source": "tasks", "tasks": ["t"]}, "eval": {"tasks": ["t"]},
                 "gate": {"quality": {"t/acc": {"max_loss_abs": 0.1}}}, "baseline": {}, "variants": {"v": {}},
                 "mlflow": {"enabled": False}})
    if fault == "sigkill":  # the kernel's OOM killer takes the worker
        os.kill(os.getpid(), signal.SIGKILL)

    def quality(job, ep):
        if fault == "server_killed_mid_eval":
            os.kill(ep.proc.pid, signal.SIGKILL)
            ep.proc.wait()
        for _ in range(3):
            ep.get()
        return {"early": None}

    def profile(job, ep, sweep=""):
        if fault == "hang":
            time.sleep(3600)
        if fault == "server_killed_mid_profile":
            os.kill(ep.proc.pid, signal.SIGKILL)
            ep.proc.wait()
        for _ in range(5):
            ep.get()
        if fault == "disk_full":  # every results write from here on is refused (EFBIG, as ENOSPC would be)
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16))
        return {}

    class Engine:
        def serve(self, model, variant, path):
            return serve(fault, tries, out)

    runner.quality, runner.profile = quality, profile
    vr = VariantResults(out)
    vr.reset()
    job = runner.Job(cfg, cfg.variant("v"), cfg.model, vr, Path("w"), Path("r"), None, None)
    return runner.run_serial(job, Engine())


def supervise(mode: str, out: Path, policy: dict) -> int:
    from evalgate import faults
    from evalgate.results import VariantResults

    if mode == "config_error":  # the worker is the real CLI on a bad params file
        cmd = [sys.executable, "-m", "evalgate", "gate", "--params", str(out.parent / "missing.yaml")]
    else:
        cmd = [sys.executable, __file__, "work", mode, str(out), TOKEN]
    launcher = None
    if os.environ.get("FAULT_LAUNCHER") == "fork":   # the worker forked from a forkserver (evalgate.repro's way)
        from evalgate.forkserver import Launcher

        launcher = Launcher(preload=["evalgate.runner", "evalgate.results"])
    return faults.supervise("v", cmd, VariantResults(out), policy, log=lambda s: print(s, flush=True),
                            launcher=launcher)


if __name__ == "__main__":
    role, mode, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    if role == "supervise":
        sys.exit(supervise(mode, out, json.loads(sys.argv[4])))
    sys.exit(work(mode, out))
