"""`dvc repro`, scheduled (`evalgate repro`, what `make repro` and gpu/pipeline.sh run): the stale
`baseline` and `run@<variant>` stages run side by side on one accelerator (evalgate.schedule), then DVC
records each and runs the rest.

  1. dvc status; dvc repro fixture workload gguf quantize   the inputs, by DVC as usual (when stale)
  2. dvc status baseline run                 which variants DVC would run (all, if the baseline is stale)
  3. the scheduler runs exactly those        the same phases, files and MLflow runs as `evalgate run`
     (engines that cannot share a device, `hf` and `llamacpp`: one at a time, each variant's stage
     command run from here, `run_stage`: its supervised worker process, as under `dvc repro`)
  4. gate and report, in this process        the same functions as their stages' commands, while
                                             the servers stop
  5. dvc commit -f <each finished stage> gate report   DVC records them as it would after running them
     (its steps, in one pass: `commit`)

Steps 4–5 replace a `dvc repro` (its status check of every stage, two interpreters importing MLflow and
the report's libraries: ≈ 17 s of a 335 s GPU verdict, H100 2026-11-26); when no variant ran, a plain
`dvc repro` runs gate and report, as their params or code may have changed. While DVC works out what
is stale (steps 1–2), a thread builds what preparing the variants needs (lm-eval's task index).

DVC 3 runs one stage at a time, so this step sits beside it instead of inside it. DVC still decides
what is stale (an unchanged variant never runs, a new one runs alone), caches each variant's folder on
its own, and keeps a permanently failed variant's status.json as that variant's result. Plain `dvc repro`
stays the serial path: the same results, one server at a time.

Faults (evalgate.faults, README: Failures): a variant whose failure stays transient after its tries is
not committed (the serial path: its stage exits 75, and `dvc repro --keep-going` runs the other
variants on); the gate and the report then run on what there is (`dvc repro --single-item`), rejecting
that variant with its reason, and this command exits 75: the next one runs only what is missing. Two
`evalgate repro` in one repository at once: the second stops at once with one line (a lock in
.dvc/tmp); two plain `dvc repro` meet DVC's own lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from evalgate.config import BASELINE, Config
from evalgate.faults import EX_TEMPFAIL
from evalgate.results import Results

PATHS = dict(
    workload="data/workload.jsonl", reference="data/reference.jsonl", results="results", checkpoints="checkpoints", gguf="gguf"
)
INPUT_STAGES = ("fixture", "workload", "gguf", "quantize")  # what every variant reads (build_inputs)


def dvc(*args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess:
    """DVC through this interpreter, and stages' `python` resolved to it too (a venv not on PATH)."""
    env = dict(os.environ)
    here = Path(sys.executable).parent
    if (here / "python").exists():
        env["PATH"] = f"{here}{os.pathsep}{env.get('PATH', '')}"
    p = subprocess.run([sys.executable, "-m", "dvc", *args], env=env, text=True, capture_output=capture)
    if check and p.returncode:
        raise SystemExit(
            f"dvc {' '.join(args)} failed with exit code {p.returncode}"
            + (f": {(p.stderr or '').strip().splitlines()[-1:]}" if capture else "")
        )
    return p


def commit(targets: list[str]) -> None:
    """`dvc commit -f <targets>` in one pass, with DVC's own steps (Stage.save, Stage.commit, the lock
    file's dump_stages, under the repository lock) but the stages collected once and dvc.lock rewritten
    once. `dvc commit` takes its targets one at a time, and each re-reads dvc.lock (≈ 110 KB for 13
    variants) with ruamel's pure-Python round-trip parser: 9 stages took 22–23 s that way on the 2-core CPU
    and 3.4–4.0 s this way, with the same dvc.lock (2026-11-26; README: Time to verdict)."""
    from dvc.repo import Repo, lock_repo

    with Repo() as repo, lock_repo(repo), _read_once(repo):
        by_name = {s.addressing: s for s in repo.index.stages}
        missing = [t for t in targets if t not in by_name]
        if missing:
            raise SystemExit(f"dvc commit: no stage named {', '.join(missing)} in dvc.yaml")
        files: dict[str, tuple] = {}
        for t in targets:
            stage = by_name[t]
            stage.save()
            stage.commit(relink=True)
            files.setdefault(stage.dvcfile.path, (stage.dvcfile, []))[1].append(stage)
        for dvcfile, stages in files.values():
            dvcfile.dump_stages(stages, update_pipeline=False)


@contextlib.contextmanager
def _read_once(repo):
    """Within one commit (under the repository lock, nothing else writing): git's index and each params
    file read once, not once per output and per stage. DVC reads the index again for every output it
    saves (`Output.ignore` → `is_tracked`: 13 reads of a 2,688-entry index) and parses params.yaml again
    for every params dependency (27 parses); together about a third of the commit under cProfile. The
    CPU default's nine stages: 2.16–2.50 s → 1.27–1.85 s, three alternating runs each, the same dvc.lock
    (2-core CPU, 2026-11-27). Both are put back on leaving."""
    import copy

    from dvc.dependency import param

    dul = repo.scm.dulwich.repo if hasattr(repo.scm, "dulwich") else None
    index = dul.open_index() if dul is not None else None
    if dul is not None:
        dul.open_index = lambda: index  # an instance attribute over the class's method, deleted below
    load, seen = param.load_path, {}

    def load_once(path, fs, **kw):  # a copy each time: callers may change what they get
        key = (path, id(fs), tuple(sorted(kw.items())))
        if key not in seen:
            seen[key] = load(path, fs, **kw)
        return copy.deepcopy(seen[key])

    param.load_path = load_once
    try:
        yield
    finally:
        param.load_path = load
        if dul is not None:
            del dul.open_index


def changed() -> set[str]:
    """The stages (`name`, `name@key`) that `dvc status` reports as changed, in the whole pipeline
    (callers pick theirs by name). One `dvc status` of the whole, not of some targets: DVC collects each
    target on its own, reading dvc.yaml, dvc.lock and params.yaml again for every one (the CPU default's
    11 targets: 2.7–2.8 s, against 1.2–1.5 s for the whole; 2-core CPU, 2026-11-27)."""
    p = dvc("status", "--json", capture=True)
    return {k.split(":")[-1] for k in json.loads(p.stdout or "{}")}


def stale(names: list[str], known: set[str] | None = None) -> list[str]:
    """The stages among `names` that `dvc status` reports as changed (`known`: its answer, already
    asked), in the given order."""
    hit = changed() if known is None else known
    if BASELINE in hit:  # every run@ reads the baseline's results: all of them will be stale
        hit = hit | {n for n in names if n.startswith("run@")}
    return [n for n in names if n in hit]


def _interrupt(*_):
    """SIGTERM (gpu/pipeline.sh --finish, a CI timeout) unwinds like Ctrl-C: every server is stopped."""
    raise KeyboardInterrupt


@contextlib.contextmanager
def repro_lock(root: Path = Path(".")):
    """One `evalgate repro` per repository at a time: a second one stops at once, with one line."""
    lock_dir = root / ".dvc" / "tmp"
    lock_dir.mkdir(parents=True, exist_ok=True)
    path = lock_dir / "evalgate-repro.lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise SystemExit(
                f"repro: another `evalgate repro` is running in this repository ({holder}); "
                f"wait for it, then run again (it runs only what is still stale)"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}, since {time.strftime('%H:%M:%S')}")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()


def transient_failures(names: list[str]) -> dict[str, dict]:
    """The variants among `names` whose results say they failed transiently (not final, not committed)."""
    results = Results(PATHS["results"])
    out = {}
    for n in names:
        with contextlib.suppress(ValueError):
            st = results.variant(n.removeprefix("run@")).read("status.json") or {}
            if st.get("ok") is False and st.get("transient"):
                out[n] = st
    return out


def finish_incomplete(failed: dict[str, dict], t0: float) -> int:
    """Gate and report on what there is (the failed variants rejected with their reason), exit 75."""
    print("repro: gate and report on what finished (dvc repro --single-item gate report)", flush=True)
    dvc("repro", "--single-item", "gate", check=False)
    dvc("repro", "--single-item", "report", check=False)
    for st, status in failed.items():
        print(f"repro: {st}: {status['transient']}: {status.get('error', '')[:300]}", flush=True)
    print(
        f"repro: incomplete after {time.time() - t0:.1f} s: {', '.join(failed)} failed transiently (not recorded as "
        f"final); run `evalgate repro` again to run only those",
        flush=True,
    )
    return EX_TEMPFAIL


def repro(cfg: Config, serial: bool = False, no_run_cache: bool = False) -> int:
    with repro_lock():
        return _repro(cfg, serial, no_run_cache)


def _repro(cfg: Config, serial: bool = False, no_run_cache: bool = False) -> int:
    from evalgate import schedule
    from evalgate.engines import get_engine

    signal.signal(signal.SIGTERM, _interrupt)
    engine = get_engine(cfg.engine["name"], cfg.engine)
    engine.preflight()
    # what preparing the variants here checks with lm-eval (its import, the task index, the gated metrics),
    # first, while DVC works out what is stale; the serial path prepares in each stage's own process, so it
    # would only take CPU from those stages
    warm = None
    if engine.attachable and not serial:
        warm = threading.Thread(target=_warm_imports, args=(cfg,), daemon=True)
        warm.start()
    t0 = time.time()
    with contextlib.suppress(Exception):  # what the interpreter, the config and the preflight took
        import psutil

        print(f"repro: 0/5 up (this process started {t0 - psutil.Process().create_time():.1f} s ago)", flush=True)

    def step(msg: str) -> None:  # with the seconds since the start: where the pipeline's own overhead goes
        print(f"repro: {msg} [+{time.time() - t0:.1f} s]", flush=True)

    stages = [BASELINE, *[f"run@{n}" for n in cfg.variants if n != BASELINE]]
    hit = changed()
    known = None
    results = Results(PATHS["results"])
    early = Early(cfg, engine, results, stages, t0) if engine.attachable and not serial else None
    warm_stop, warming = threading.Event(), None
    try:
        if any(h.split("@")[0] in INPUT_STAGES for h in hit):
            step(f"1/5 inputs ({', '.join(INPUT_STAGES)})")
            # the engine's per-machine caches (vLLM: model info and the baseline's compiled graphs, from a
            # server with random weights while the fixture trains) filled beside the inputs, not by every
            # server's first start at once, on the critical path
            warming = threading.Thread(target=_warm_machine, args=(engine, cfg, t0, warm_stop), daemon=True)
            warming.start()
            if warm is not None and checkpoints_stale(cfg, hit):
                warm = _after(warm, _warm_checkpoint_imports)
            build_inputs(cfg, step, early, warm)
        else:
            step("1/5 inputs up to date")
            known = hit
        todo = stale(stages, known)
        step(f"2/5 stale: {', '.join(todo) or 'none'}")
        if todo and serial:
            # exactly what DVC runs itself, each variant in its own process; --keep-going: a variant that
            # failed transiently (exit 75) does not stop the others
            step(f"3/5 running {len(todo)} variant(s) one at a time (dvc repro --keep-going)")
            if no_run_cache:  # each stale variant's command runs: `dvc repro` would check its outputs out of
                # DVC's cache (dvc.lock still names them) and `--no-run-cache` does not stop that (DVC 3.67)
                for st in todo:
                    dvc("repro", "--force", "--single-item", st, check=False)
            p = dvc("repro", "--keep-going", check=False)
            if p.returncode:
                failed = transient_failures(todo)
                if failed and (BASELINE in failed or set(stale(stages)) <= set(failed)):
                    return finish_incomplete(failed, t0)
                raise SystemExit(f"dvc repro --keep-going failed with exit code {p.returncode} (see above)")
            print(f"repro: done in {time.time() - t0:.1f} s", flush=True)
            return 0
        slots = []
        if todo and not engine.attachable:
            # engines that serve in-process (hf) or one CPU server at a time: each stale variant in its own
            # supervised worker process, as its stage runs it (`evalgate run`: the fault policy's timeout,
            # memory limit and retries; an in-process model is freed with its process) but forked from one
            # forkserver that imported what a worker needs once (run_stage, evalgate.forkserver), then gate,
            # report and one `dvc commit`, as below. `dvc repro --keep-going` around the same runs cost ≈ 49 s
            # of a 438 s CPU default (2026-11-27: per-stage lock and hash work, a process per stage)
            rest = [st for st in todo if st != BASELINE]
            lanes = min(engine.side_by_side(), len(rest))
            step(
                f"3/5 running {len(todo)} variant(s) "
                + (f"({lanes} side by side after the baseline; each profile alone)" if lanes > 1 else "one at a time")
            )
            if BASELINE in todo:  # alone: every variant compares with its results
                step(f"3/5 {BASELINE}")
                run_stage(cfg, BASELINE)
                if failed := transient_failures([BASELINE]):
                    return finish_incomplete(failed, t0)  # nothing to compare with: DVC would stop here too
            if lanes > 1:
                run_side_by_side(cfg, rest, lanes, step)
            else:
                for st in rest:
                    step(f"3/5 {st}")
                    run_stage(cfg, st)
        else:
            if warm is not None:
                warm.join()
            prepared = early.take(todo) if early is not None else {}  # name → its slot (its server started)
            for st in todo:
                name = st.removeprefix("run@")
                if name in prepared:
                    slots.append(prepared[name])
                    continue
                job = prepare(cfg, name, results, engine)
                if job is not None:
                    slots.append(schedule.Slot(job))
            # the gate's heavy import, while the servers start (≈ 45 s or more before the first
            # profile); not beside lm-eval's import above, which the jobs wait for: there, preparing them took
            # 2.3 s in a warm H100 run against 1.3 s without it (docs/results/h100-2026-11-27-12, -13 and -11)
            if slots:  # (with none, gate and report may not even run here)
                threading.Thread(target=_warm_report_imports, daemon=True).start()
            step(f"3/5 running {len(slots)} variant(s) side by side")
        code = None
        # gate and report need no server: they run while the servers stop (the stop's log lines land in
        # each variant's server.log, a DVC output, so the commit waits for the stops)
        ahead = early.ahead if early is not None else None
        with schedule.scheduled(cfg, engine, slots, PATHS, ahead) if slots else contextlib.nullcontext():
            failed = transient_failures(todo)
            done = [st for st in todo if st not in failed]
            if done and not failed:
                step("4/5 gate (while the servers stop)")
                code = gate_and_report(step)
                if slots:
                    step("4/5 waiting for the servers to stop")
        if failed:
            if done:
                step(f"4/5 dvc commit {' '.join(done)}")
                commit(done)
            return finish_incomplete(failed, t0)
        if not done:  # nothing ran: gate and report may still be stale (their params or code)
            step("4/5 dvc repro (gate, report)")
            dvc("repro")
        else:
            step(f"5/5 dvc commit {' '.join(done)}{' gate report' if not code else ' gate'}")
            commit([*done, "gate", *(["report"] if not code else [])])
            if code:
                return code
        print(f"repro: done in {time.time() - t0:.1f} s", flush=True)
        return 0
    finally:  # a server started ahead and not handed to the scheduler, whatever ended the run: stopped here
        if early is not None:  # (those the scheduler took, it stopped: nothing is left of them)
            early.stop()
        if warming is not None:  # and the engine's warm-up server, if it is still up
            warm_stop.set()
            warming.join(timeout=60)


def prepare(cfg: Config, name: str, results: Results, engine):
    """runner.prepare for one variant with this run's paths (a Job, or None: rejected before it starts)."""
    from evalgate import runner

    return runner.prepare(
        cfg,
        name,
        results.variant(name),
        Path(PATHS["workload"]),
        Path(PATHS["reference"]),
        str(Path(PATHS["checkpoints"]) / name) if name != BASELINE else None,
        results.variant(BASELINE),
        engine,
        PATHS["gguf"],
    )


class Early:
    """The servers of the stale variants, started as soon as their weights exist: once the fixture is built
    and the stale quantize@ stages have run (build_inputs), while the workload stage is built and before
    the schedule, which otherwise waited for it (docs/results/h200-2026-11-27-19: the fixture was done at
    +174.6 s, the schedule began at +197.8 s).

    Only what DVC already calls stale once the fixture is built (`begin`, with its `dvc status` answer): a
    stage stale then stays stale while the rest of the inputs are built, so no server starts for a variant
    that will not run; and only variants that the engine runs and whose quantize@ stage recorded no error
    (a rejected variant is prepared later: its failed MLflow run names the new workload). Every checkpoint
    folder is current by then (its stage ran, or DVC calls it up to date), so each server loads the weights
    its variant is judged on. Anything that goes wrong here only takes the head start away: `take` then
    hands over nothing, and the variants are prepared and started as before, where their errors are raised."""

    def __init__(self, cfg: Config, engine, results: Results, stages: list[str], t0: float):
        self.cfg, self.engine, self.results, self.stages, self.t0 = cfg, engine, results, stages, t0
        self.ahead = None  # schedule.Ahead: the slots of the servers started
        self.error: Exception | None = None

    def candidates(self, hit: set[str]) -> list[str]:
        from evalgate.config import ConfigError
        from evalgate.engines.base import VariantUnsupported
        from evalgate.models import served_model
        from evalgate.quantize import checkpoint_error

        names = []
        for st in stale(self.stages, hit):
            name = st.removeprefix("run@")
            variant = self.cfg.variant(name)
            folder = str(Path(PATHS["checkpoints"]) / name) if name != BASELINE else None
            if checkpoint_error(folder):
                continue
            try:
                self.engine.check(served_model(self.cfg.model, variant, folder, PATHS["gguf"]), variant)
            except (VariantUnsupported, ConfigError):  # its own preparation says why, in the schedule
                continue
            names.append(name)
        return names

    def begin(self, hit: set[str]) -> None:
        """Prepare them and start their servers (a second or two: each start returns once its process is
        launched), in the caller's thread (the one that imports)."""
        from evalgate import schedule

        try:
            jobs = [prepare(self.cfg, name, self.results, self.engine) for name in self.candidates(hit)]
            self.ahead = schedule.start_ahead(self.cfg, self.engine, [j for j in jobs if j is not None], log=self.say)
        except Exception as e:  # noqa: BLE001 - only a head start: the variants' own preparation says it
            self.error = e

    def take(self, todo: list[str]) -> dict:
        """The slots of the servers started here whose variant `todo` runs, by name; any other is stopped
        (none, unless dvc.yaml changed meanwhile). Nothing after an error: its servers are stopped."""
        from evalgate import schedule

        if self.error is not None:
            self.say(f"no servers ahead ({type(self.error).__name__}: {self.error}); they start in the schedule")
            self.stop()
            self.ahead = None
            return {}
        if self.ahead is None:
            return {}
        names = {st.removeprefix("run@") for st in todo}
        schedule.Ahead([s for s in self.ahead.slots if s.name not in names], None).stop()
        self.ahead.slots = [s for s in self.ahead.slots if s.name in names]
        return {s.name: s for s in self.ahead.slots}

    def say(self, msg: str) -> None:
        """A line in the log with the seconds since the start, not a step mark (it happens beside the steps)."""
        print(f"repro: {msg.removeprefix('schedule: ')} (at +{time.time() - self.t0:.1f} s)", flush=True)

    def stop(self) -> None:
        """Every server started here that is still up stopped (the scheduler stops those it took over)."""
        if self.ahead is not None:
            self.ahead.stop()


LOGS = Path(".dvc/tmp/evalgate-logs")  # a side-by-side variant's output (as `dvc queue logs` keeps them)
WARM_UP = LOGS / "warm-up"  # what the engine's warm-up writes (_warm_machine; gpu/collect.py keeps its log)


def run_side_by_side(cfg: Config, stages: list[str], lanes: int, step) -> None:
    """`stages` `lanes` at a time, each by `run_stage` in a thread (its supervisor) with its worker in the
    lanes (evalgate.lanes: loads and evaluations side by side, profiles one at a time). Each worker writes
    to its own log (LOGS); its start and its last line are said here. Ctrl-C / SIGTERM stops every worker
    (`stop`; the supervisors record them as interrupted) and leaves the rest unstarted."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from evalgate import lanes as lanes_mod

    LOGS.mkdir(parents=True, exist_ok=True)
    plan = lanes_mod.plan(LOGS / "lanes.lock", lanes)
    stop = threading.Event()
    first_open = threading.Event()  # the first worker's MLflow run is open (so is the execution's parent)

    def one(st: str, first: bool) -> int:
        if not first:  # two workers opening the first runs at once could each create a parent run
            first_open.wait()
        if stop.is_set():
            return 130
        name = st.removeprefix("run@")
        log_path = LOGS / f"{name}.log"
        step(f"3/5 {st} started (its log: {log_path})")
        t = time.time()
        with open(log_path, "w") as log:
            if first:
                threading.Thread(target=_opened, args=(name, t, first_open, stop), daemon=True).start()
            try:
                rc = run_stage(cfg, st, env=plan.env(), scope=f"{st}-{os.getpid()}", stop=stop, output=log.fileno())
            finally:
                first_open.set()
        lines = log_path.read_text(errors="replace").strip().splitlines()
        step(f"3/5 {st} done in {time.time() - t:.1f} s (exit {rc}): {lines[-1][:200] if lines else ''}")
        return rc

    pool = ThreadPoolExecutor(lanes, thread_name_prefix="variant")
    try:
        futures = [pool.submit(one, st, i == 0) for i, st in enumerate(stages)]
        for f in as_completed(futures):
            f.result()
    except BaseException:
        stop.set()
        first_open.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _opened(name: str, since: float, event: threading.Event, stop: threading.Event, timeout_s: float = 120) -> None:
    """Set `event` once the variant's tracking.json is written after `since` (its MLflow run is open)."""
    path = Path(PATHS["results"]) / name / "tracking.json"
    deadline = time.time() + timeout_s
    while not (event.is_set() or stop.is_set()) and time.time() < deadline:
        with contextlib.suppress(OSError):
            # the kernel stamps files from its coarse clock, up to one timer tick behind time.time(): a file
            # written just after `since` may carry an earlier mtime (seen: tests/test_lanes.py waited out 60 s)
            if path.stat().st_mtime >= since - MTIME_SLACK_S:
                break
        time.sleep(0.2)
    event.set()


MTIME_SLACK_S = 0.05


def run_stage(cfg: Config, stage: str, **side_by_side) -> int:
    """`baseline` or `run@<variant>` as dvc.yaml's command runs it (`evalgate run`: its supervisor in this
    process, the work in a worker process, forked from this repro's forkserver); returns its exit code (75:
    failed transiently). `side_by_side`: see run_side_by_side."""
    from evalgate import forkserver, stages

    name = stage.removeprefix("run@")
    variant = name != BASELINE
    return stages.supervise(
        cfg,
        name,
        Path(PATHS["results"]) / name,
        Path(PATHS["workload"]),
        Path(PATHS["reference"]),
        Path(PATHS["checkpoints"]) / name if variant else None,
        Path(PATHS["results"]) / BASELINE if variant else None,
        stages.PARAMS,
        Path(PATHS["gguf"]),
        launcher=forkserver.shared(),
        **side_by_side,
    )


def gate_and_report(step=None) -> int:
    """The gate and report stages' commands, called in this process (dvc.yaml's `cmd`s, with their
    default arguments: evalgate.stages). Returns the report's exit code (75: MLflow stopped answering
    while it logged, so it is not recorded as done and the next repro runs it again). `step`: marks the
    report's start, so the time to verdict's breakdown splits the two."""
    from evalgate import stages
    from evalgate.compose import load

    cfg, results = load(stages.PARAMS), Path(PATHS["results"])
    stages.gate(cfg, results, Path("reports/gate.json"))
    if step is not None:
        step("4/5 report (summary, pictures, MLflow, registry)")
    with _picture_pool() as pool:
        return stages.report(
            cfg, results, Path("reports/gate.json"), Path("reports"), Path(PATHS["checkpoints"]), stages.PARAMS, pool
        )


@contextlib.contextmanager
def _picture_pool(workers: int = 4):
    """Worker processes for the report's four pictures, forked from this run's forkserver when it has one
    (started for the variants' workers, with matplotlib among its imports: each starts in milliseconds);
    None without (the pictures are drawn in this process)."""
    from concurrent.futures import ProcessPoolExecutor

    from evalgate import forkserver

    launcher = forkserver.running()
    if launcher is None:
        yield None
        return
    pool = ProcessPoolExecutor(min(workers, os.cpu_count() or 1), mp_context=launcher.ctx)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def build_inputs(cfg: Config, step, early: Early | None = None, warm: threading.Thread | None = None) -> None:
    """The inputs every variant reads. `dvc repro` builds the fixture and the gguf stage's output (what the
    quantize stages read); then the stale `quantize@<variant>` stages run in this process, one `dvc commit`
    records them, and `dvc repro workload` runs while the servers that need nothing more start (Early).
    The quantize commands are the stages' own (evalgate.stages.quantize: a marker, or a checkpoint for an
    offline method). Under `dvc repro` each would be a process with its own lock and hashing (one `dvc
    repro` of the CPU default's six: 7.8–8.2 s against 2.2–3.1 s here, docs/results/cpu-2026-11-27-3).

    They run before any server starts, not beside the starts: on an H100 quantize@w4a16 took 34.4 s
    beside six starting servers, and its server, started after it, was the last one up and held every
    profile back (docs/results/h100-2026-11-27-18); run first, every checkpoint is current when Early
    starts the servers, w4a16's among them. The commit comes before the starts too: it relinks the files
    it records, which a server may be reading. `warm` (this run's imports while the fixture trained) is
    awaited first: everything that imports runs in this thread, one thing after the other (lm-eval's
    preparation and transformers' imports side by side raced on transformers' lazily imported attributes:
    "module 'transformers' has no attribute 'PreTrainedTokenizerBase'", h100-2026-11-27-15)."""
    from concurrent.futures import ThreadPoolExecutor

    from evalgate import stages

    dvc("repro", "fixture", "gguf")
    hit = changed()
    todo = stale([f"quantize@{n}" for n in cfg.variants if n != BASELINE], hit)
    if warm is not None:
        warm.join()
    if todo:
        step(f"1/5 {' '.join(todo)} (in this process, before the servers start)")
        for st in todo:
            name = st.removeprefix("quantize@")
            stages.quantize(cfg, name, Path(PATHS["checkpoints"]) / name, Path(PATHS["gguf"]))
        commit(todo)
    step("1/5 workload" + (" (the servers that need nothing more start beside it)" if early is not None else ""))
    with ThreadPoolExecutor(1, thread_name_prefix="workload") as pool:  # a process: its thread only waits
        work = pool.submit(dvc, "repro", "workload")
        if early is not None:  # the servers that need nothing more start now, beside the workload (Early)
            early.begin(hit)
        work.result()  # its error, raised here


def _warm_machine(engine, cfg: Config, t0: float, stop: threading.Event) -> None:
    """Engine.warm_machine for the baseline (the first server profiled), its outcome in the log (not a step
    mark: it runs beside the steps); never fatal (a server fills the caches itself)."""
    try:
        said = engine.warm_machine(cfg.model, cfg.variant(BASELINE), WARM_UP, stop)
    except Exception as e:  # noqa: BLE001 - only a head start
        said = f"failed ({type(e).__name__}: {e}); each server fills its caches itself"
    if said:
        print(f"repro: warm-up beside the inputs: {said} (done at +{time.time() - t0:.1f} s)", flush=True)


def _warm_imports(cfg: Config) -> None:
    """What evalgate.runner.prepare checks with lm-eval, done while DVC works: lm-eval's import (1.5 s on the
    2-core CPU, `datasets` most of it), the task index and the gated metrics (both kept for the process)."""
    with contextlib.suppress(Exception):  # only a head start: prepare reports any real error itself
        from evalgate.evaluate import check_gated_metrics, task_manager

        check_gated_metrics(task_manager(cfg.eval["tasks"], cfg.eval.get("include_path")), [th.metric for th in cfg.thresholds])


def checkpoints_stale(cfg: Config, hit: set[str]) -> bool:
    """Whether a stale quantize@ stage writes a compressed-tensors checkpoint (evalgate.quantize.SCHEMES)."""
    from evalgate.quantize import SCHEMES

    return any(f"quantize@{n}" in hit and cfg.variant(n).quantization["method"] in SCHEMES for n in cfg.variants)


def _after(first: threading.Thread, then, *args) -> threading.Thread:
    """A started thread that runs `then(*args)` once `first` has ended (one import after the other)."""
    t = threading.Thread(target=lambda: (first.join(), then(*args)), daemon=True)
    t.start()
    return t


def _warm_checkpoint_imports() -> None:
    """What a compressed-tensors checkpoint imports (evalgate.quantize.preload), while the fixture trains:
    after it, they were on the path of that variant's server, the last one up (an H100,
    docs/results/h100-2026-11-27-18: quantize@w4a16 took 34.4 s)."""
    with contextlib.suppress(Exception):  # only a head start: the quantize command imports them itself
        from evalgate.quantize import preload

        preload()


def _warm_report_imports() -> None:
    """The gate's heavy import (scipy.stats), which step 4 would otherwise pay after the last profile, on
    the critical path; here it loads while the servers start, long before the first profile (this process
    runs the profiles' client, so nothing of ours should compute during one). Not matplotlib: the report's
    pictures are drawn in processes forked from the forkserver, which has it (`_picture_pool`). Not on the
    CPU path: there the baseline's worker may already be profiling."""
    with contextlib.suppress(Exception):  # only a head start
        import scipy.stats  # noqa: F401
