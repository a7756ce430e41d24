"""What a failure of a variant's run is, and what the run does about it (README, Failures).

  config error  a bad value: one line naming the key, exit 2, before anything loads (evalgate.config)
  permanent     the variant cannot run as asked (an option its engine refuses, a failed quantization, a
                missing checkpoint, an error of the run itself): recorded in its status.json, rejected by the
                gate with the reason; the stage exits 0, so DVC caches the rejection (it is the answer for these
                params) and the other variants run. Never retried.
  transient     the same run may pass next time: retried at once, up to `faults.attempts` tries with a
                doubling `faults.backoff_s` between them; when the tries are used up it is recorded in
                status.json (`transient`: its kind) and the stage exits 75 (EX_TEMPFAIL): DVC does not record
                a stage whose command failed, so the next `dvc repro` runs it again. Kinds (`KINDS`):
      oom          out of memory at load or while serving (MemoryError, torch/CUDA OOM, ENOMEM; the address
                   space limit `faults.memory_limit_mb`; vLLM's "no available memory for the cache blocks")
      port         the server's port was taken between choosing it and binding it (EADDRINUSE)
      timeout      the variant ran past `faults.variant_timeout_s` (hung), its server never became healthy,
                   its evaluation timed out
      server_died  the serving process died under it (a server killed mid-profile or mid-eval, a worker killed
                   by a signal: the kernel's OOM killer sends SIGKILL)
      disk_full    ENOSPC / EDQUOT / EFBIG on a write: not retried at once (nothing frees the space), not cached
      interrupted  SIGINT / SIGTERM: every process of the variant is stopped, exit 130 / 143, not cached

The serial path (`evalgate run VARIANT`, what `dvc repro` runs per variant) is a supervisor: it validates
the params, then runs the variant's work in a worker process (`evalgate run VARIANT --worker`, in its own
session, with the memory limit), kills the worker's whole process tree when the variant times out or is
interrupted (the supervisor is a child subreaper, so nothing the worker started can escape as an
orphan), and retries by this policy. The scheduler (evalgate.schedule) applies the same policy per server.

Retries are this small loop rather than tenacity: the thing retried is a process, the decision needs its
exit status and its status.json, and the waits are seconds.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable

EX_TEMPFAIL = 75  # sysexits.h: "temporary failure; the user is invited to retry"
EX_CONFIG = 2  # a bad value (the CLI's ConfigError)
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}

# kind → retried at once? (every transient kind is kept out of DVC's cache)
KINDS = {"oom": True, "port": True, "timeout": True, "server_died": True, "disk_full": False, "interrupted": False}

PATTERNS = [
    ("disk_full", r"No space left on device|Disk quota exceeded|File too large|\[Errno (28|27|122)\]"),
    (
        "oom",
        r"out of memory|OutOfMemoryError|can't allocate memory|Cannot allocate memory|MemoryError|"
        r"No available memory for the cache blocks|\[Errno 12\]",
    ),
    ("port", r"Address already in use|EADDRINUSE|\[Errno 98\]"),
    ("timeout", r"not healthy after|timed out|TimeoutExpired|TimeoutError|ran past faults\.variant_timeout_s"),
    (
        "server_died",
        r"server died|died (before|during) its|killed by signal|exited with -\d+|Connection refused|"
        r"RemoteDisconnected|Server disconnected|ConnectionResetError|\[Errno 111\]",
    ),
]


def classify(error: BaseException | str | None) -> str | None:
    """The transient kind of a failure (`KINDS`), or None: permanent."""
    if error is None:
        return None
    if isinstance(error, BaseException):
        if isinstance(error, KeyboardInterrupt):
            return "interrupted"
        if isinstance(error, MemoryError):
            return "oom"
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return "disk_full"
        if isinstance(error, OSError) and error.errno == errno.ENOMEM:
            return "oom"
        if isinstance(error, OSError) and error.errno == errno.EADDRINUSE:
            return "port"
        text = f"{type(error).__name__}: {error}"
        cause = error.__cause__ or error.__context__
        if cause is not None and cause is not error:
            text += f" | {type(cause).__name__}: {cause}"
    else:
        text = error
    if m := re.search(r"\[transient: (\w+)\]", text):  # a worker's own verdict (evalgate.schedule.quality_worker)
        return m.group(1) if m.group(1) in KINDS else None
    for kind, pattern in PATTERNS:
        if re.search(pattern, text):
            return kind
    return None


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- processes ------------------------------------------------------------------------------------------------
def _prctl(option: int, arg: int) -> bool:
    """Linux prctl(2) on this process; False where there is none (not Linux) or it fails."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def become_subreaper() -> bool:
    """Orphans of our descendants are re-parented to this process instead of PID 1 (Linux
    PR_SET_CHILD_SUBREAPER), so `kill_tree` still finds them: no orphan outlives a variant. Not on Linux, the
    process tree of the worker is all we can reach."""
    return _prctl(36, 1)


def die_with_parent() -> bool:
    """This process gets SIGKILL when the thread that started it exits (Linux PR_SET_PDEATHSIG): a helper
    process (the fixture's draft trainer) does not outlive a killed stage and write into its outputs later.
    Not on Linux, it ends when its work does."""
    return _prctl(1, int(signal.SIGKILL))


def descendants(pid: int | None = None) -> list:
    """Every running process below `pid` (default: this one), zombies left out."""
    import psutil

    try:
        procs = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
    return out


def kill_tree(
    proc: subprocess.Popen | None, grace_s: float = 10.0, exclude: set[int] = frozenset(), only: Callable | None = None
) -> int:
    """Stop `proc` and every process below it and below this one but those in `exclude` (SIGTERM, then
    SIGKILL after `grace_s`); `only` (a `psutil.Process` → bool, `in_scope`): of those, only the ones it
    picks, and only they are reaped (a sibling worker's exit status stays its own). Returns how many were
    running."""
    import psutil

    victims = {p.pid: p for p in descendants() if p.pid not in exclude and (only is None or only(p))}
    if proc is not None and proc.poll() is None:
        with contextlib.suppress(psutil.NoSuchProcess):
            victims.setdefault(proc.pid, psutil.Process(proc.pid))
    for p in victims.values():
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(list(victims.values()), timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
    _reap(None if only is None else [pid for pid in victims if proc is None or pid != proc.pid])
    return len(victims)


def _reap(pids: list[int] | None = None) -> None:
    """Collect exited orphans re-parented to us (a subreaper must, or they stay zombies): any of them, or
    only `pids` (side by side, another supervisor's worker may be our child too)."""
    if pids is not None:
        for pid in pids:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
        return
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


SCOPE = "EVALGATE_SCOPE"  # a side-by-side worker's mark, inherited by whatever it starts


def in_scope(scope: str, sid: int) -> Callable:
    """Whether a process is one worker's: in its session (`sid`: the worker is a session leader), or started
    with its mark in the environment (a server that made a session of its own). With several supervisors
    in one process (evalgate.repro's CPU variants side by side) "every descendant not there before" would
    take a sibling's worker too."""
    import psutil

    def mine(p) -> bool:
        try:
            return os.getsid(p.pid) == sid or p.environ().get(SCOPE) == scope
        except (psutil.Error, OSError):
            return False

    return mine


def _limits(memory_limit_mb: int | None) -> Callable[[], None] | None:
    if not memory_limit_mb:
        return None

    def apply() -> None:  # in the child, before exec: the worker's address space
        limit = int(memory_limit_mb) * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


class Interrupted(Exception):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _signals_raise():
    """SIGINT / SIGTERM become `Interrupted` in the supervisor, so it stops its worker's tree first. Only
    the main thread may set handlers: a supervisor in another thread is stopped through its `stop` event by
    whoever handles the signal there (evalgate.repro)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in EXIT_SIGNAL}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# -- the supervisor ----------------------------------------------------------------------------------------------
FAULT_FD = "EVALGATE_FAULT_FD"  # the worker tells its supervisor what failed through this pipe (a full disk
# cannot take a status.json)


def tell_supervisor(kind: str | None, error: str) -> None:
    """In a worker: the failure's kind and line, for the supervisor (no-op without one)."""
    fd = os.environ.get(FAULT_FD)
    if fd:
        with contextlib.suppress(OSError, ValueError):
            os.write(int(fd), f"{kind or ''}\t{one_line(error, 2000)}\n".encode())


def supervise(
    name: str,
    cmd: list[str],
    out,
    policy: dict,
    log: Callable[[str], None] = print,
    mlflow: dict | None = None,
    launcher=None,
    env: dict[str, str] | None = None,
    scope: str | None = None,
    stop=None,
    output: int | None = None,
) -> int:
    """Run a variant's worker (`cmd`) under the fault policy (`policy`: params `faults`); `out`: the
    variant's `VariantResults`. Returns the stage's exit code: 0 (finished, or failed permanently and
    recorded), 2 (a config error, printed by the worker), 75 (transient, tries used up, recorded but not
    final), 130 / 143 (interrupted). `launcher` (evalgate.forkserver.Launcher): the worker is forked from
    its server, which has imported what a worker needs, instead of started as `cmd`. `env`: added to the
    worker's environment. Side by side with other supervisors in this process (threads): `scope`, a mark
    unique to this variant, limits what is stopped to this worker's processes (`in_scope`), and `stop` (a
    threading.Event) interrupts it as SIGINT would; `output`, a file descriptor, takes the worker's stdout
    and stderr (default: this process's own)."""
    become_subreaper()
    before = {p.pid for p in descendants()}  # not ours to stop (none, when this is the stage's own process)
    env = {**(env or {}), **({SCOPE: scope} if scope else {})}
    attempts = int(policy.get("attempts", 3))
    backoff = float(policy.get("backoff_s", 5))
    timeout = policy.get("variant_timeout_s")
    kind, error = None, ""
    for attempt in range(1, attempts + 1):
        if attempt > 1:
            wait = backoff * 2 ** (attempt - 2)
            log(f"run {name}: try {attempt} of {attempts} in {wait:g} s ({kind}: {one_line(error, 200)})")
            if stop is None:
                time.sleep(wait)
            elif stop.wait(wait):  # stopped while waiting to try again: no new worker
                _record(out, "interrupted", "interrupted (stopped before its next try)", attempt - 1, mlflow)
                log(f"run {name}: interrupted: not recorded as final (the next repro runs it again)")
                return EXIT_SIGNAL[signal.SIGINT]
        proc, told, only = None, "", None
        r, w = os.pipe()
        try:
            with _signals_raise():
                if launcher is not None:
                    try:
                        proc = launcher.start(cmd, w, policy.get("memory_limit_mb"), output=output, env=env)
                    except Exception as e:  # noqa: BLE001 - the forkserver only saves imports: a fresh one instead
                        log(f"run {name}: no forked worker ({type(e).__name__}: {one_line(str(e), 200)}); starting one")
                        launcher = None
                if launcher is None:
                    proc = subprocess.Popen(
                        cmd,
                        start_new_session=True,
                        pass_fds=(w,),
                        env={**os.environ, **env, FAULT_FD: str(w)},
                        stdout=output,
                        stderr=None if output is None else subprocess.STDOUT,
                        preexec_fn=_limits(policy.get("memory_limit_mb")),
                    )
                os.close(w)
                w = None
                only = in_scope(scope, proc.pid) if scope else None
                try:
                    rc = _wait(proc, float(timeout) if timeout else None, stop)
                except subprocess.TimeoutExpired:
                    kill_tree(proc, exclude=before, only=only)
                    rc = None
        except Interrupted as e:
            kill_tree(proc, exclude=before, only=only)
            _record(out, "interrupted", f"interrupted by {e} (every process of the variant stopped)", attempt, mlflow)
            log(f"run {name}: interrupted by {e}: stopped; not recorded as final (the next repro runs it again)")
            return EXIT_SIGNAL[e.signum]
        finally:
            if w is not None:
                os.close(w)
            told = _drain(r)
        left = kill_tree(None, exclude=before, only=only)  # what the worker left running (a server it could not stop)
        if left:
            log(f"run {name}: stopped {left} process(es) the worker left running")
        told_kind, _, told_error = told.partition("\t")
        if rc is None:
            kind, error = "timeout", f"ran past faults.variant_timeout_s = {float(timeout):g} s (stopped)"
        elif rc == 0:
            return 0  # finished, or a permanent failure the worker recorded
        elif rc == EX_CONFIG:
            return EX_CONFIG  # the worker printed the line
        elif rc == EX_TEMPFAIL:
            kind = told_kind or _status(out).get("transient") or "server_died"
            error = told_error or _status(out).get("error", "transient failure")
        elif rc < 0:
            sig = signal.Signals(-rc).name
            kind, error = (
                "server_died",
                f"the variant's process was killed by signal {sig}"
                + (" (the kernel's OOM killer sends SIGKILL)" if -rc == signal.SIGKILL else ""),
            )
        else:
            error = told_error or f"the variant's process exited with {rc} (see the stage's log above)"
            kind = told_kind or classify(error)
            if not kind:  # an error of the run itself: permanent
                _record(out, None, error, attempt, mlflow)
                return 0
        if not KINDS.get(kind, False):
            break
    _record(out, kind, error, attempt, mlflow)
    log(
        f"run {name}: {kind} after {attempt} tr{'y' if attempt == 1 else 'ies'}: {one_line(error, 300)}; "
        f"not recorded as final (exit {EX_TEMPFAIL}): the next repro runs it again"
    )
    return EX_TEMPFAIL


def _wait(proc, timeout: float | None, stop) -> int:
    """The worker's exit code; `subprocess.TimeoutExpired` past `timeout`; `Interrupted` (as SIGINT) once
    `stop` is set."""
    if stop is None:
        return proc.wait(timeout=timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        if stop.is_set():
            raise Interrupted(signal.SIGINT)
        step = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
        try:
            return proc.wait(timeout=max(step, 0))
        except subprocess.TimeoutExpired:
            if deadline is not None and time.monotonic() >= deadline:
                raise


def _drain(fd: int) -> str:
    """What the worker wrote to the fault pipe (its last line)."""
    chunks = []
    with contextlib.suppress(OSError):
        os.set_blocking(fd, False)
        while True:
            try:
                b = os.read(fd, 65536)
            except BlockingIOError:
                break
            if not b:
                break
            chunks.append(b)
    with contextlib.suppress(OSError):
        os.close(fd)
    lines = b"".join(chunks).decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""


def _status(out) -> dict:
    try:
        return out.read("status.json") or {}
    except ValueError:
        return {}


def _record(out, kind: str | None, error: str, attempt: int, mlflow: dict | None = None) -> None:
    """The failure in status.json (and the variant's MLflow run closed as FAILED), in the worker's stead."""
    st = _status(out)
    extra = {"transient": kind} if kind else {}
    with contextlib.suppress(OSError):
        out.path.mkdir(parents=True, exist_ok=True)
        out.fail(st.get("phase", "run") if st.get("ok") is False else "run", one_line(error, 2000), attempts=attempt, **extra)
    with contextlib.suppress(Exception):
        info = out.tracking()
        if info and st.get("ok") is not False:  # the worker closed its run itself when it recorded a failure
            from evalgate.tracking import VariantRun

            run = VariantRun.attach(info, mlflow or {})
            if run is not None:
                run.close(False, error=one_line(error, 2000))


def worker_command(argv: list[str]) -> list[str]:
    """This very command, as a worker: the same interpreter and arguments, plus `--worker`."""
    return [sys.executable, "-m", "evalgate", *argv, "--worker"]
