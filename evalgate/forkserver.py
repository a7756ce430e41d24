"""Variant workers forked from a process that has imported torch, transformers, lm-eval and MLflow once.

Why: every variant of an in-process engine (`hf`, `llamacpp`) runs in a worker process of its own
(evalgate.faults.supervise), and on the 2-core CPU a fresh interpreter spends ≈ 12 s importing what a
worker needs (`python -c "import torch, transformers, lm_eval, mlflow, scipy.stats, …"`, 2026-11-27):
seven times in the CPU default. The standard library's forkserver imports them once
(`set_forkserver_preload`) and forks each worker from there; a forked worker starts with them in memory.
The worker is still a process of its own in a session of its own, under the same fault policy: its exit
code, its memory limit, its fault pipe and its stdout/stderr are what a `python -m evalgate … --worker`
child would have (`Worker` is the part of `subprocess.Popen` that `supervise` uses). The scheduler's
quality workers (`python -m evalgate run VARIANT --attach …`, one per server) are forked the same way.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import multiprocessing.connection
import os
import resource
import signal
import subprocess
import sys

# what a variant's worker imports (evalgate.cli → runner → engines, lm-eval, the tracking); a module that is
# not installed is left out (multiprocessing ignores a failed preload)
PRELOAD = [
    "torch",
    "transformers",
    "transformers.models.llama.modeling_llama",
    "transformers.models.auto.tokenization_auto",
    "lm_eval",
    "lm_eval.tasks",
    "lm_eval.models.huggingface",
    "lm_eval.models.openai_completions",   # the scheduler's quality workers (local-completions)
    "mlflow",
    "scipy.stats",
    "evalgate.cli",
    "evalgate.runner",
    "evalgate.engines.hf",
    "evalgate.evaluate",
    "evalgate.sequential",
    "evalgate.tracking",
    "evalgate.report",       # the report's pictures (evalgate.repro._picture_pool)
    "matplotlib.pyplot",
]


class Worker:
    """A forked worker, as `subprocess.Popen` shows one to evalgate.faults.supervise."""

    def __init__(self, proc: multiprocessing.process.BaseProcess, args: list[str]):
        self.proc, self.args, self.pid = proc, args, proc.pid

    def poll(self) -> int | None:
        return self.proc.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self.proc.join(timeout)
        if self.proc.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.proc.exitcode

    def kill(self) -> None:
        """The worker's whole session (it is a session leader), as a timeout stops a Popen'd one."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        self.proc.join(5)


def _main(
    argv: list[str], env: dict[str, str], fds: dict[str, multiprocessing.connection.Connection], memory_limit_mb: int | None
) -> None:
    """In the forked worker: what `subprocess.Popen(start_new_session=True, pass_fds=…, env=…)` would have
    set up, then the command (`-m MODULE …`, `-c CODE …` or `SCRIPT …`) as `python` runs it; its SystemExit is the exit code."""
    os.setsid()
    os.environ.clear()
    os.environ.update(env)
    for target, fd in (("stdout", 1), ("stderr", 2)):   # the caller's, as they are now
        getattr(sys, target).flush()
        os.dup2(fds[target].fileno(), fd)
    if "fault" in fds:
        from evalgate.faults import FAULT_FD

        os.environ[FAULT_FD] = str(fds["fault"].fileno())
    if memory_limit_mb:
        limit = int(memory_limit_mb) * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import atexit
    import runpy

    try:  # the command's own entry, as the interpreter would run it
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        elif argv[0] == "-c":
            sys.argv = ["-c", *argv[2:]]
            exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})  # noqa: S102 - as `python -c`
        else:
            sys.argv = list(argv)
            runpy.run_path(argv[0], run_name="__main__")
    finally:  # as at a normal interpreter exit (multiprocessing's child leaves through os._exit): MLflow's
        atexit._run_exitfuncs()  # end-of-run and flush handlers


@contextlib.contextmanager
def _stdio_to_devnull():
    """This process's stdout and stderr on /dev/null for a moment: what it starts then inherits those.

    Why: the forkserver (and multiprocessing's resource tracker, which it starts) would hold this process's
    stdout and stderr open until their own exit, which comes ≈ 2 s after ours (the server tears down torch
    and the other preloads): whoever reads our output to its end (CI, a pipe, bench/gpu_verdict.py) waited
    that long. Seen on an H200 (2026-11-27): `evalgate repro` gone 0.2-0.4 s after its last line, its output
    closed 1.1-1.7 s later; on the CPU the holders were these two processes. The workers get their stdout
    and stderr passed when they start (`_main`), so the server itself needs neither."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (null, *saved):
            os.close(fd)


class Launcher:
    """Starts workers from the forkserver (started, with its imports, on creation)."""

    def __init__(self, preload: list[str] = PRELOAD):
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(preload)
        from multiprocessing import forkserver

        with _stdio_to_devnull():   # now, so that it is not counted among the worker's descendants
            forkserver.ensure_running()

    def start(self, cmd: list[str], fault_fd: int | None, memory_limit_mb: int | None,
              output: int | None = None, env: dict[str, str] | None = None) -> Worker:
        """`cmd`: the worker's command, `[sys.executable, …]` (evalgate.faults.worker_command: `python -m
        evalgate run VARIANT … --worker`), run with this process's environment as it is now; `fault_fd`: the
        write end of the fault pipe (the worker gets its own copy; the caller closes its own, as with Popen's
        pass_fds); `memory_limit_mb`: the worker's address space (RLIMIT_AS); `output`: a file descriptor that
        takes the worker's stdout and stderr (default: this process's own); `env`: added to the environment."""
        if not cmd or cmd[0] != sys.executable:
            raise ValueError(f"not a command of this interpreter: {cmd[:1]}")
        argv = cmd[1:]
        fds = {
            "stdout": multiprocessing.connection.Connection(os.dup(1 if output is None else output)),
            "stderr": multiprocessing.connection.Connection(os.dup(2 if output is None else output)),
        }
        if fault_fd is not None:
            fds["fault"] = multiprocessing.connection.Connection(os.dup(fault_fd), readable=False)
        args = (argv, {**os.environ, **(env or {})}, fds, memory_limit_mb)
        proc = self.ctx.Process(target=_main, args=args, name=" ".join(argv[:3]))
        try:
            proc.start()
        finally:
            for conn in fds.values():
                conn.close()
        return Worker(proc, cmd)


@functools.cache
def shared() -> Launcher | None:
    """One forkserver per process (evalgate.repro's variant workers, evalgate.schedule's quality workers):
    its imports are paid once; None where it cannot start, and the workers start as fresh interpreters."""
    try:
        return Launcher()
    except (OSError, ValueError) as e:
        print(f"no forkserver ({e}); each worker imports on its own", flush=True)
        return None


def running() -> Launcher | None:
    """The shared forkserver's launcher if this process has started it; never starts one."""
    return shared() if shared.cache_info().currsize else None
