"""The scheduler: the variants' servers side by side on one accelerator, their quality checks at the
same time, their load profiles one at a time.

Serially, a GPU verdict is mostly waiting: each variant pays a ~90 s server start, then the card idles
through evaluation and bookkeeping, while a 309 M-parameter model fills a fraction of it. Here:

1. every server that fits is started at once (`Engine.start`); each gets its memory share computed
   from what it needs (`Engine.memory_need`: weights + the same KV-cache bytes for every variant +
   overhead), packed into the free memory in waves when they do not all fit;
2. as a server becomes healthy its quality phase runs in a worker process (fidelity screen, lm-eval
   with sequential looks, answer flips: `python -m evalgate run VARIANT --attach …`), all of them concurrently —
   quality is not timing-sensitive — the baseline's too: a variant measures its reference log-probs
   and its first look's docs, then waits for the baseline's results before comparing (its fidelity
   screen and looks); a variant that is already clearly worse is stopped there and never profiled;
3. the load profiles run one at a time and only while nothing else touches the card (no server
   starting, no evaluation running): the baseline first, then each variant, then the baseline once
   more (A/A: the run's noise floor). Every profile has the same neighbours: a profiled server stays
   up, idle, until the last profile, unless a waiting variant needs its memory (then it is stopped).
   With `hold` (`load.hold_neighbours`) they are held still (SIGSTOP) for the length of each profile.
   With `alone` (`load.alone_check`), the baseline is then profiled a third time with every other
   server stopped: what idle neighbours do to a profile (`alone/<metric>` beside `aa/<metric>`);
4. a failure (a server that dies or never becomes healthy, a crashed or hung worker) fails only its
   variant, recorded in its status.json with the phase and the error; the others go on. A transient one
   (evalgate.faults: out of memory, a port taken, a timeout, a server that died) first gets its server
   started again, up to `faults.attempts` tries with a doubling `faults.backoff_s` between them; one
   still failing is recorded as transient and left out of `dvc commit` (evalgate.repro).

Every phase lands in the variant's own results folder, exactly as the serial `run@<variant>` stage
writes it (both call evalgate.runner), so evalgate.repro can hand each finished folder to DVC
(`dvc commit`) and DVC's caching stays per variant. Engines that serve in-process (`hf`) cannot share
a device this way: their variants run one after another through the same code (`run_serial`).
Hand-written because no serving tool schedules benchmark phases across servers (vllm bench sweep,
GuideLLM and llm-optimizer all run one server at a time).
"""
from __future__ import annotations

import contextlib
import functools
import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from evalgate.config import BASELINE
from evalgate.faults import KINDS, classify

GIB = 2**30


@dataclass
class Slot:
    """One variant in the schedule and where it stands."""
    job: object                       # evalgate.runner.Job
    need: dict = field(default_factory=dict)
    state: str = "pending"            # pending → starting → healthy → quality → ready → profiling → done | failed
    #                                   (the baseline: … → profiling → ready_again → profiling … → done)
    server: object = None
    endpoint: object = None
    events: list = field(default_factory=list)   # (phase, start, end) in time.time() seconds
    times: dict = field(default_factory=dict)
    again: list = field(default_factory=list)   # the baseline's sweeps still due at the end: "aa", "alone"
    attempts: int = 1                 # tries so far (evalgate.faults)
    retry_at: float = 0.0             # a transient failure's next try starts no earlier
    transient: str | None = None      # the kind of its last failure, when transient
    counted: bool = False             # its memory counted in the scheduler's `used`
    alone: bool = False               # its quality phase runs again with the device to itself (deferred → quality)
    started_at: float | None = None   # its server started before the schedule (`start_ahead`): when

    @property
    def name(self) -> str:
        return self.job.variant.name

    def mark(self, phase: str, t0: float, t1: float | None = None) -> None:
        self.events.append({"phase": phase, "start": t0, "end": t1 or time.time()})


def plan_memory(needs: dict[str, dict], capacity: int) -> list[list[str]]:
    """Waves of variants whose servers fit `capacity` bytes together, in order (first fit); a variant
    that alone exceeds the capacity gets a wave of its own (its start then fails with vLLM's error)."""
    waves, cur, used = [], [], 0
    for name, need in needs.items():
        if cur and used + need["total"] > capacity:
            waves.append(cur)
            cur, used = [], 0
        cur.append(name)
        used += need["total"]
    if cur:
        waves.append(cur)
    return waves


def memory_shares(needs: dict[str, dict], total: int) -> dict[str, dict]:
    """Per server: its KV-cache bytes and a `gpu_memory_utilization` just above its need (vLLM checks at
    start that this much is free; the KV cache itself is sized by the bytes, not the fraction)."""
    return {n: {"kv_cache_memory_bytes": need["kv_cache_memory_bytes"],
                "gpu_memory_utilization": min(0.95, 1.05 * need["total"] / total)} for n, need in needs.items()}


class Scheduler:
    """Runs `slots` (the baseline first) with the phases injected, so tests drive it with fake servers.

    start(slot) → server (`wait()` → endpoint, `alive()`, `stop()`); quality(slot) runs the quality
    phase (blocking, in a worker thread); profile(slot, endpoint, sweep) runs one load sweep (blocking,
    on the scheduler's thread; sweep "" first, "aa" the baseline's A/A, "alone" its third);
    finish(slot, final) writes metrics/status; fail(slot, phase, error) records a final failure
    (`slot.transient`: its kind when transient); retry(slot) clears a failed try's files.
    `policy`: params `faults` (`attempts`, `backoff_s`); without it nothing is retried.
    again_alone(slot) → True when the quality phase just run must run once more with the device to itself
    (evalgate.runner.retry_alone; it sets the first try's files aside): the slot waits, its server up, until
    no other server starts, evaluates or is profiled, then runs its quality phase again alone."""

    def __init__(self, slots: list[Slot], capacity: int | None, *, start: Callable, quality: Callable,
                 profile: Callable, finish: Callable, fail: Callable, aa: bool = True, alone: bool = False,
                 hold: bool = False, log: Callable = print,
                 poll_s: float = 0.2, policy: dict | None = None, retry: Callable | None = None,
                 again_alone: Callable | None = None):
        self.slots = slots
        self.again_alone = again_alone or (lambda s: False)
        self.attempts = int((policy or {}).get("attempts", 1))
        self.backoff_s = float((policy or {}).get("backoff_s", 0))
        self.retry_fn = retry or (lambda s: None)
        self.again = (["aa", "alone"] if alone else ["aa"]) if aa else []
        self.hold = hold
        self.capacity = capacity
        self.start_fn, self.quality_fn, self.profile_fn = start, quality, profile
        self.finish_fn, self.fail_fn, self.log, self.poll_s = finish, fail, log, poll_s
        self.events: queue.Queue = queue.Queue()
        self.used = 0
        self.profiles: list[tuple[str, float, float]] = []   # (variant, start, end): the exclusivity record
        base = self._base()
        if base is not None:
            base.again = list(self.again)

    def _base(self) -> Slot | None:
        return next((s for s in self.slots if s.name == BASELINE), None)

    # --- transitions ------------------------------------------------------------------------------
    def _launch(self, s: Slot) -> None:
        ahead = s.server is not None   # started before the schedule (start_ahead): only waited for here
        s.state, t0 = "starting", s.started_at if ahead and s.started_at else time.time()
        self.used += s.need.get("total", 0)
        s.counted = True
        self.log(f"schedule: {'started' if ahead else 'starting'} {s.name}"
                 + (f" ({s.need['total'] / GIB:.1f} GiB)" if s.need else "")
                 + (f" {time.time() - t0:.1f} s ago, beside the inputs" if ahead else ""))

        def go():
            try:
                if s.server is None:
                    s.server = self.start_fn(s)
                ep = s.server.wait()
                s.times["start_s"] = time.time() - t0
                s.mark("start", t0)
                self.events.put(("healthy", s, ep))
            except Exception as e:  # noqa: BLE001 - a server that fails to start fails only its variant
                s.mark("start", t0)
                self.events.put(("failed", s, ("start", f"{type(e).__name__}: {e}")))

        threading.Thread(target=go, daemon=True).start()

    def _run_quality(self, s: Slot) -> None:
        s.state, t0 = "quality", time.time()

        def go():
            try:
                early = self.quality_fn(s)
                s.mark("quality", t0)
                self.events.put(("quality_done", s, early))
            except Exception as e:  # noqa: BLE001
                s.mark("quality", t0)
                self.events.put(("failed", s, ("quality", f"{type(e).__name__}: {e}")))

        threading.Thread(target=go, daemon=True).start()

    def _release(self, s: Slot) -> None:
        if s.server is not None:
            try:
                s.server.stop()
            except Exception as e:  # noqa: BLE001 - stopping is best effort; the stop itself kills the group
                self.log(f"schedule: stopping {s.name}: {e}")
            s.server = None
        s.started_at = None
        if s.counted:
            self.used -= s.need.get("total", 0)
            s.counted = False

    def _fail(self, s: Slot, phase: str, error: str) -> None:
        kind = classify(error)
        self._release(s)
        if kind and KINDS.get(kind) and s.attempts < self.attempts:
            wait = self.backoff_s * 2 ** (s.attempts - 1)
            s.attempts += 1
            self.log(f"schedule: {s.name} failed during {phase} ({kind}: {error[:200]}); try {s.attempts} of "
                     f"{self.attempts} in {wait:g} s")
            s.state, s.retry_at, s.endpoint = "pending", time.time() + wait, None
            s.again = list(self.again) if s is self._base() else []
            self.retry_fn(s)
            return
        self.log(f"schedule: {s.name} failed during {phase}: {error}" + (f" (transient: {kind})" if kind else ""))
        s.state, s.again, s.transient = "failed", [], kind
        self.fail_fn(s, phase, error)

    def _hold(self, slots: list[Slot], stopped: bool) -> None:
        """SIGSTOP / SIGCONT these idle servers (`server.hold`); one that cannot is left running, said."""
        for x in slots:
            try:
                x.server.hold(stopped)
            except Exception as e:  # noqa: BLE001 - holding only takes the neighbours off the host
                self.log(f"schedule: {'stopping' if stopped else 'continuing'} {x.name}'s processes: {e}")

    def _profile(self, s: Slot, sweep: str = "") -> None:
        s.state, t0 = "profiling", time.time()
        phase = f"profile_{sweep}" if sweep else "profile"
        # the idle neighbours held still (SIGSTOP) for the profile: running but idle, six vLLM servers beside
        # one took 3.4 % of its throughput at c128 and cut its TTFT at c1 by 3.3 % (H200, two leases,
        # bench/neighbours.py, docs/results/h200-2026-11-27-18); stopped, they run nothing, as if not there.
        # Only idle servers are up during a profile (nothing starts or evaluates then): none is mid-request.
        held = [x for x in self.slots if x is not s and x.server is not None and hasattr(x.server, "hold")] \
            if self.hold else []
        self.log(f"schedule: profiling {s.name}" + {"": "", "aa": " again (A/A)",
                                                   "alone": " once more, every other server stopped"}[sweep]
                 + (f" ({len(held)} idle neighbour(s) held)" if held else ""))
        try:
            self._hold(held, True)
            try:
                if not s.server.alive():
                    raise RuntimeError("the server died before its profile")
                self.profile_fn(s, s.endpoint, sweep)
                if not s.server.alive():
                    raise RuntimeError("the server died during its profile")
            finally:   # continued however it ended: an interruption's stops need them running
                self._hold(held, False)
        except Exception as e:  # noqa: BLE001
            s.mark(phase, t0)
            self.profiles.append((s.name, t0, time.time()))
            self._fail(s, "profile", f"{type(e).__name__}: {e}")
            return
        t1 = time.time()
        s.mark(phase, t0, t1)
        self.profiles.append((s.name, t0, t1))
        s.times["profile_s"] = s.times.get("profile_s", 0.0) + (t1 - t0)
        if s.again:
            s.state = "ready_again"       # kept up for its next sweep at the end
            self.finish_fn(s, False)      # interim: the variants' rate levels scale with its peak
            return
        if s.name == BASELINE or any(x.state == "pending" for x in self.slots):
            self._release(s)   # its memory is wanted; otherwise it idles on, the next profiles' neighbour
        s.state = "done"
        self.finish_fn(s, True)

    def _make_room(self) -> bool:
        """A variant waits for memory that nothing will free: nothing starts, evaluates, waits for or runs a
        profile, and the memory is held by idle servers kept up as the next profiles' neighbours, or by the
        baseline kept up for its A/A. Free it, the neighbours first, the A/A last (then the run has no A/A:
        said in the log and absent from its results); without this the schedule waited forever. True when
        something was freed."""
        now = time.time()
        waiting = [s for s in self.slots if s.state == "pending" and s.retry_at <= now]
        if not waiting or any(s.state in ("starting", "healthy", "quality", "ready", "profiling", "deferred")
                              for s in self.slots):
            return False
        idle = [s for s in self.slots if s.state == "done" and s.server is not None]
        if idle:
            self.log(f"schedule: stopping the idle {', '.join(s.name for s in idle)} to make room for {waiting[0].name}")
            self._release_all(idle)
            return True
        base = self._base()
        if base is not None and base.state == "ready_again" and base.server is not None:
            self.log(f"schedule: {waiting[0].name} does not fit beside the baseline: the baseline is stopped, this "
                     f"run has no {' or '.join(base.again)} sweep")
            base.again = []
            self._release(base)
            base.state = "done"
            self.finish_fn(base, True)
            return True
        return False

    # --- the loop -----------------------------------------------------------------------------------
    def run(self) -> dict:
        with self.running() as out:
            return out

    @contextlib.contextmanager
    def running(self):
        """The schedule's result, yielded while its servers stop side by side: what needs no server (the
        gate, the report) runs meanwhile instead of after the stops (≈ 3 s of a 262 s GPU verdict, H100
        2026-11-26). Leaving waits for every stop: nothing is left running, whatever happened (an
        exception, Ctrl-C, SIGTERM: then the stops are waited for before it propagates)."""
        try:
            out = self._run()
        except BaseException:
            self._release_all(self.slots)
            raise
        stops = self._release_all(self.slots, wait=False)
        try:
            yield out
        finally:
            for t in stops:
                t.join()

    def _release_all(self, slots: list[Slot], wait: bool = True) -> list[threading.Thread]:
        """Stop these servers side by side: each stop waits for its server's processes to exit (seven one
        after another took ≈ 6 s at the end of a GPU run, side by side ≈ 3 s with writing the schedule).
        `wait=False`: the stops still running are returned, to be joined."""
        return side_by_side([functools.partial(self._release, s) for s in slots if s.server is not None or s.counted], wait)

    def _run(self) -> dict:
        t_begin = time.time()
        for s in self.slots:   # already started (start_ahead): theirs whatever the capacity, they hold it
            if s.state == "pending" and s.server is not None:
                self._launch(s)
        while True:
            states = [s.state for s in self.slots]
            if all(st in ("done", "failed") for st in states):
                break
            busy = any(st in ("starting", "healthy", "quality") for st in states)
            ready = [s for s in self.slots if s.state == "ready"]
            base = self._base()
            # 1. start servers, a wave at a time: only when nothing waits for its profile
            if not ready and not any(st == "profiling" for st in states) and not any(
                    s.alone and s.state == "quality" for s in self.slots):
                for s in self.slots:
                    if s.state == "pending" and s.retry_at <= time.time() and (
                            self.capacity is None or not self.used or self.used + s.need.get("total", 0) <= self.capacity):
                        self._launch(s)
            # 2. quality as soon as a server is healthy; a variant's comparisons wait in its worker for
            #    the baseline's quality (evalgate.runner.quality), its own measurements do not
            for s in self.slots:
                if s.state == "healthy":
                    self._run_quality(s)
            # 3. one profile, only while nothing else uses the device
            if ready and not busy:
                nxt = next((s for s in ready if s is base), ready[0])
                self._profile(nxt)
                continue
            # 3b. a quality phase to run again alone: once no other server starts, evaluates or is profiled
            deferred = next((s for s in self.slots if s.state == "deferred"), None)
            if deferred is not None and not busy and not ready and "profiling" not in states:
                self.log(f"schedule: evaluating {deferred.name} again, alone")
                self._run_quality(deferred)
                continue
            others_done = all(s.state in ("done", "failed") for s in self.slots if s is not base)
            if base is not None and base.state == "ready_again" and others_done and not busy:
                sweep = base.again.pop(0)
                if sweep == "alone":
                    self._release_all([s for s in self.slots if s is not base])
                self._profile(base, sweep)
                continue
            if self._make_room():
                continue
            # 4. wait for the next event
            try:
                kind, s, payload = self.events.get(timeout=self.poll_s)
            except queue.Empty:
                continue
            if kind == "healthy":
                s.state, s.endpoint = "healthy", payload
            elif kind == "quality_done":
                if not s.alone and self.again_alone(s):   # not reproducible: once more, alone
                    self.log(f"schedule: {s.name}'s evaluation was not reproducible; it runs again alone")
                    s.alone, s.state = True, "deferred"
                elif payload:   # stopped early: rejected without a profile
                    self.log(f"schedule: {s.name} stopped early, not profiled: {payload.get('reason', '')[:200]}")
                    s.again = []
                    self._release(s)
                    s.state = "done"
                    self.finish_fn(s, True)
                else:
                    s.state = "ready"
                    if s is base:
                        self.finish_fn(s, False)   # interim metrics.json: the variants' looks read it
            elif kind == "failed":
                self._fail(s, *payload)
        return {"start": t_begin, "end": time.time(), "profiles": self.profiles,
                "variants": {s.name: {"state": s.state, "events": s.events, "times": s.times} for s in self.slots}}


def quality_worker(cmd_base: list[str], timeout_s: float, launcher=None) -> Callable:
    """The quality phase as a worker process per variant (`python -m evalgate run VARIANT --attach`): its
    own interpreter (no shared GIL or lm-eval state with the others), killed on timeout. `launcher`
    (evalgate.forkserver.Launcher): forked from a process that has imported lm-eval, torch and MLflow
    once, instead of seven fresh interpreters importing them while seven servers start beside them.
    `run.stop_all()` kills the workers still running (the schedule interrupted: a forked worker is the
    forkserver's child in a session of its own, so neither Ctrl-C nor this process's exit reaches it)."""
    live: set = set()

    def spawn(cmd: list[str], log) -> object:
        nonlocal launcher
        if launcher is not None:
            try:
                return launcher.start(cmd, None, None, output=log.fileno())
            except Exception as e:  # noqa: BLE001 - the forkserver only saves imports: a fresh one instead
                print(f"schedule: no forked quality worker ({type(e).__name__}: {e}); starting one", flush=True)
                launcher = None
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def run(s: Slot):
        job = s.job
        rec = job.out.file("server.json")
        rec.write_text(json.dumps(s.endpoint.record()))
        cmd = [*cmd_base, s.name, "--attach", str(rec), "--out", str(job.out.path)]
        if job.baseline is not None:
            cmd += ["--baseline", str(job.baseline.path)]
        log_path = job.out.file("quality.log")
        with open(log_path, "w") as log:
            proc = spawn(cmd, log)
            live.add(proc)
            try:
                rc = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)   # reaped, not left a zombie
                raise
            finally:
                live.discard(proc)
        status = job.out.read("status.json") or {}
        if rc or status.get("ok") is False:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            error = status.get("error") or f"quality worker exited with {rc}: " + " | ".join(tail)
            raise RuntimeError(error + (f" [transient: {status['transient']}]" if status.get("transient") else ""))
        q = job.out.quality() or {}
        s.times.update(q.get("times", {}))
        return q.get("early")

    def stop_all() -> None:
        for proc in list(live):
            with contextlib.suppress(Exception):
                proc.kill()
                proc.wait(timeout=10)

    run.stop_all = stop_all
    return run


def gpu_utilization_sampler(stop: threading.Event, out: list, period_s: float = 0.5) -> threading.Thread:
    """GPU utilization samples (time, %) through NVML while the schedule runs, outside the load sweeps
    (evalgate.profile.SWEEPING: nothing of ours polls the driver during a profile): its idle share."""
    from evalgate.profile import SWEEPING

    def go():
        from evalgate.gpu import visible_device

        h = visible_device()
        if h is None:  # no GPU here
            return
        import pynvml

        while not stop.is_set():
            if SWEEPING.is_set():
                stop.wait(0.05)
                continue
            try:
                out.append((time.time(), float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu)))
            except Exception:  # noqa: BLE001
                return
            stop.wait(period_s)
    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def _track_all(runner, slots: list[Slot], host: list) -> None:
    """Open each variant's MLflow run (one thread: the first opens the parent run the others find), each
    without a system-metrics monitor of its own; the host's system metrics go to the parent, once
    (`host`: that monitor, for the schedule to finish)."""
    from evalgate import tracking

    for s in slots:
        try:
            runner.track(s.job, system_metrics=False)
        except Exception as e:  # noqa: BLE001 - MLflow errors are never fatal (tracking); a file error is said
            print(f"schedule: {s.name}: opening its MLflow run failed: {type(e).__name__}: {e}", flush=True)
    parent = next((s.job.tracker.info["parent_run_id"] for s in slots if s.job.tracker is not None), None)
    if parent is not None:
        host.append(tracking.host_metrics(slots[0].job.cfg.mlflow, parent))


def device_capacity(cfg, engine) -> tuple[int, int] | None:
    """(bytes the servers may hold together, the card's total bytes); None without a card to plan on
    (then the servers start without shares)."""
    mem = engine.device_memory() if hasattr(engine, "device_memory") else None
    if not mem:
        return None
    free, total = mem
    return int(free * float(cfg.engine.get("schedule_memory_fraction", 0.9))), total


def _shares(engine, slots: list[Slot], total: int) -> None:
    """Each slot's memory need and its share of the card (`memory_shares`), where it has none yet."""
    todo = [s for s in slots if not s.need]
    needs = {s.name: engine.memory_need(s.job.model, s.job.variant) for s in todo}
    shares = memory_shares(needs, total)
    for s in todo:
        s.need = needs[s.name]
        s.need["share"] = shares[s.name]


@dataclass
class Ahead:
    """Servers started before the schedule (`start_ahead`), for `scheduled` to take over; `capacity`:
    the card as `device_capacity` saw it before they took any of it."""
    slots: list[Slot]
    capacity: tuple[int, int] | None

    def stop(self) -> None:
        """Stop them (the run ended before its schedule began)."""
        stop_servers([s.server for s in self.slots if s.server is not None])
        for s in self.slots:
            s.server = s.started_at = None


def side_by_side(calls: list[Callable[[], None]], wait: bool = True) -> list[threading.Thread]:
    """Each call in a thread of its own (server stops: each waits for its process group to exit); joined
    unless `wait` is False, when the threads are returned, to be joined by the caller."""
    threads = [threading.Thread(target=c) for c in calls]
    for t in threads:
        t.start()
    if wait:
        for t in threads:
            t.join()
    return threads


def stop_servers(servers: list) -> None:
    """Stop these servers side by side, returning once every one has exited (`Scheduler._release_all` is
    the same with the scheduler's bookkeeping)."""
    side_by_side([x.stop for x in servers])


def start_ahead(cfg, engine, jobs: list, log: Callable = print) -> Ahead:
    """Start these prepared variants' servers now, before the schedule (evalgate.repro: as soon as the
    fixture and the checkpoints exist, while the workload is built), in order while they fit the card;
    `scheduled(…, ahead=)` then waits for them instead of starting them. The server start is the
    schedule's first ≈ 65–80 s on an H200 and needs only the weights: it need not wait for the workload
    stage and DVC's status and commit (docs/results/h200-2026-11-27-19)."""
    slots = [Slot(j) for j in jobs]
    cap = device_capacity(cfg, engine)
    if cap is not None:
        _shares(engine, slots, cap[1])
    used, started = 0, []
    try:
        for s in slots:
            if cap is not None and used and used + s.need["total"] > cap[0]:
                continue   # waits for the schedule's own waves
            s.server = engine.start(s.job.model, s.job.variant, s.job.out.path, s.need.get("share"))
            s.started_at = time.time()
            used += s.need.get("total", 0)
            started.append(s.name)
    except BaseException:   # none left running: the caller never gets them
        Ahead([s for s in slots if s.server is not None], cap).stop()
        raise
    if started:
        log(f"schedule: started {', '.join(started)} ahead, beside the inputs")
    return Ahead([s for s in slots if s.server is not None], cap)


@contextlib.contextmanager
def scheduled(cfg, engine, slots: list[Slot], paths: dict, ahead: Ahead | None = None):
    """The prepared variants (`runner.prepare`) through the Scheduler with the real phases: servers from
    the engine, quality in worker processes, profiles and the bookkeeping from evalgate.runner. Yields
    the schedule (also in the baseline's schedule.json) while the servers stop (Scheduler.running);
    a server's log is a DVC output, so `dvc commit` comes after leaving, not inside. `ahead`: servers
    already started (`start_ahead`); `slots` holds them and the card is planned as they found it."""
    from evalgate import forkserver, runner

    capacity = None
    mem = ahead.capacity if ahead is not None else device_capacity(cfg, engine)
    if mem:
        capacity, total = mem
        _shares(engine, slots, total)
        waves = plan_memory({s.name: s.need for s in slots}, capacity)
        print(f"schedule: {len(slots)} servers in {len(waves)} wave(s) on {capacity / GIB:.0f} GiB: "
              + " | ".join(", ".join(w) for w in waves), flush=True)
    worker = [sys.executable, "-m", "evalgate", "run", "--params", "params.yaml", "--workload", paths["workload"],
              "--reference", paths["reference"]]

    def finish(s: Slot, final: bool) -> None:
        runner.finish(s.job, {k: v for k, v in s.times.items() if k in ("start_s", "profile_s")}, final)
        s.job.out.write_timeline(s.name, s.events, s.times)

    def fail(s: Slot, phase: str, error: str) -> None:
        s.job.out.write_timeline(s.name, s.events, s.times)
        runner.fail(s.job, phase, error, transient=s.transient)

    def again_alone(s: Slot) -> bool:   # the count is the second evaluation's retry/ metric (runner.quality)
        if not runner.retry_alone(cfg, s.job.out):
            return False
        s.job.out.set_aside_quality()
        return True

    def start(s: Slot):
        return engine.start(s.job.model, s.job.variant, s.job.out.path, s.need.get("share"))

    # every variant's MLflow run opens while the servers start (seven runs: ≈ 2 s before the first server
    # started, H100 2026-11-26); whatever reports to a run (a quality worker reads its tracking.json) waits
    host: list = []   # the one system-metrics monitor (tracking.host_metrics)
    tracked = threading.Thread(target=_track_all, args=(runner, slots, host), daemon=True)

    def tracking(fn: Callable) -> Callable:
        def wrapped(*args):
            tracked.join()
            return fn(*args)
        return wrapped

    util: list = []
    stop = threading.Event()
    gpu_utilization_sampler(stop, util)
    threading.Thread(target=engine.warm_client, daemon=True).start()   # the profiles' client, while servers start
    quality = quality_worker(worker, float(cfg.engine.get("quality_timeout_s", 1800)), forkserver.shared())
    sch = Scheduler(slots, capacity, start=start,
                    quality=tracking(quality),
                    profile=tracking(lambda s, ep, sweep: runner.profile(s.job, ep, sweep)),
                    finish=tracking(finish), fail=tracking(fail), aa=bool(cfg.load.get("aa")),
                    alone=bool(cfg.load.get("alone_check")), hold=bool(cfg.load.get("hold_neighbours", True)),
                    policy=cfg.faults,
                    retry=lambda s: s.job.out.clear_phases(), again_alone=again_alone)
    tracked.start()
    try:
        with sch.running() as out:
            stop.set()
            for monitor in filter(None, host):
                with contextlib.suppress(Exception):   # tracking is never fatal
                    monitor.finish()
            out["gpu_utilization"] = util
            base = next((s for s in slots if s.name == BASELINE), slots[0])
            base.job.out.write("schedule.json", out)
            yield out
    finally:   # interrupted: the servers are stopped (Scheduler.running), and so is every quality worker
        quality.stop_all()
