"""CPU variants side by side (evalgate.lanes, evalgate.repro.run_side_by_side, evalgate.faults.supervise's
scope and stop): loads and evaluations overlap, a profile never overlaps anything, and one supervisor never
stops another's worker."""

import json
import multiprocessing
import os
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from evalgate import faults, lanes
from evalgate.results import VariantResults

POLICY = {"attempts": 1, "backoff_s": 0, "variant_timeout_s": 60, "memory_limit_mb": None}


def test_plan_splits_the_cores():
    assert lanes.plan(Path("l"), 2, cores=2) == lanes.Lanes(Path("l"), 1, 2)
    assert lanes.plan(Path("l"), 3, cores=8).share_threads == 2
    assert lanes.plan(Path("l"), 4, cores=2).share_threads == 1


def _worker(env: dict, log: str, name: str, evaluate_s: float, profile_s: float) -> None:
    os.environ.update(env)

    class Engine:
        threads = []

        def use_threads(self, n):
            self.threads.append(n)

    eng = Engine()
    lane = lanes.Lane(eng)

    def note(what):
        with open(log, "a") as f:
            f.write(json.dumps([name, what, time.time(), eng.threads[-1]]) + "\n")

    lane.share()
    note("share")
    time.sleep(evaluate_s)
    note("share_end")
    lane.alone()
    note("alone")
    time.sleep(profile_s)
    note("alone_end")
    lane.close()


def test_profiles_are_alone_and_evaluations_side_by_side(tmp_path):
    plan = lanes.plan(tmp_path / "lanes.lock", 3, cores=6)
    log = tmp_path / "log.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(plan.env(), str(log), f"v{i}", 0.4 + 0.1 * i, 0.3)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    spans = {}
    for name, what, t, threads in rows:
        kind = what.removesuffix("_end")
        spans.setdefault((name, kind), [None, None, threads])[1 if what.endswith("_end") else 0] = t
    alone = [(n, a, b) for (n, k), (a, b, _) in spans.items() if k == "alone"]
    assert len(alone) == 3
    for n, a, b in alone:   # nothing else ran while a profile did
        for (m, k), (c, d, _) in spans.items():
            if m != n:
                assert d <= a or c >= b, (n, m, k)
    shared = sorted((a, b) for (n, k), (a, b, _) in spans.items() if k == "share")
    assert shared[1][0] < shared[0][1]   # the evaluations did overlap
    assert {threads for (n, k), (_, _, threads) in spans.items()} == {2, 6}   # 6 cores / 3 lanes, all 6 alone


def test_without_lanes_nothing_is_locked(monkeypatch):
    monkeypatch.delenv(lanes.ENV, raising=False)
    lane = lanes.Lane(object())   # an engine without use_threads: never called
    lane.share()
    lane.alone()
    lane.close()


def _orphan_cmd(marker: Path, seconds: float) -> list[str]:
    """A worker that leaves a detached child (its own session) running, then exits after `seconds`."""
    code = (f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', "
            f"{str(marker)!r}], start_new_session=True); time.sleep({seconds}); open({str(marker)!r}, 'w').write('done')")
    return [sys.executable, "-c", code]


def _running(token: str) -> list[int]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if token in " ".join(p.info["cmdline"] or []) and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except psutil.Error:
            pass
    return out


@pytest.mark.parametrize("launcher", ["popen", "fork"])
def test_side_by_side_supervisors_stop_only_their_own(tmp_path, launcher):
    """A supervisor that finishes first sweeps what its worker left (a server in a session of its own),
    not its sibling's worker, which finishes normally; the sibling's sweep then takes its own orphan."""
    from evalgate.forkserver import Launcher

    lch = Launcher(preload=[]) if launcher == "fork" else None
    token = uuid.uuid4().hex
    rcs = {}

    def one(name, seconds):
        marker = tmp_path / f"{name}-{token}"
        rcs[name] = faults.supervise(name, _orphan_cmd(marker, seconds), VariantResults(tmp_path / name), POLICY,
                                     log=lambda s: None, launcher=lch, scope=f"{name}-{token}")

    threads = [threading.Thread(target=one, args=("short", 0.5)), threading.Thread(target=one, args=("long", 4))]
    for t in threads:
        t.start()
    threads[0].join(30)
    assert rcs["short"] == 0 and (tmp_path / f"short-{token}").read_text() == "done"
    assert not _running(f"short-{token}")              # its orphan was stopped
    assert _running(f"long-{token}")                   # the sibling's worker and orphan were not
    threads[1].join(30)
    assert rcs["long"] == 0 and (tmp_path / f"long-{token}").read_text() == "done"
    assert not _running(token)


def test_stop_interrupts_a_side_by_side_supervisor(tmp_path):
    token = uuid.uuid4().hex
    stop = threading.Event()
    out = VariantResults(tmp_path / "v")
    rc = {}
    t = threading.Thread(target=lambda: rc.setdefault("v", faults.supervise(
        "v", _orphan_cmd(tmp_path / f"v-{token}", 30), out, POLICY, log=lambda s: None, scope=f"v-{token}", stop=stop)))
    t.start()
    deadline = time.time() + 20
    while len(_running(token)) < 1:
        assert time.time() < deadline
        time.sleep(0.1)
    stop.set()
    t.join(30)
    assert rc["v"] == 130 and not _running(token)
    assert json.loads((tmp_path / "v" / "status.json").read_text())["transient"] == "interrupted"


def test_run_side_by_side_keeps_to_its_lanes(tmp_path, monkeypatch):
    """At most `lanes` stages at once, every stage run once with the lanes' environment, its own scope and
    log; an interruption stops the running ones and starts no other."""
    from evalgate import repro

    monkeypatch.chdir(tmp_path)
    live, peak, seen = set(), [0], []
    lock = threading.Lock()

    def opened(st):   # what a worker writes first: its MLflow run (the next worker waits for the first's)
        folder = tmp_path / "results" / st.removeprefix("run@")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tracking.json").write_text("{}")

    def fake_stage(cfg, st, env, scope, stop, output):
        opened(st)
        with lock:
            live.add(st)
            peak[0] = max(peak[0], len(live))
            seen.append((st, env[lanes.ENV], scope))
        os.write(output, f"run {st}: finished\n".encode())
        time.sleep(0.2)
        with lock:
            live.discard(st)
        return 0

    monkeypatch.setattr(repro, "run_stage", fake_stage)
    said = []
    stages = [f"run@v{i}" for i in range(5)]
    repro.run_side_by_side(None, stages, 2, said.append)
    assert peak[0] == 2 and sorted(s for s, _, _ in seen) == stages
    assert len({scope for _, _, scope in seen}) == 5
    assert any("run@v3 done" in line and "run run@v3: finished" in line for line in said)

    def interrupted(cfg, st, env, scope, stop, output):
        opened(st)
        if st == "run@v1":
            raise KeyboardInterrupt
        stop.wait(60)   # long: under a doubled load on 2 cores a 10 s wait once ran out first (2026-11-27)
        seen.append((st, "stopped", stop.is_set()))
        return 130

    seen.clear()
    monkeypatch.setattr(repro, "run_stage", interrupted)
    with pytest.raises(KeyboardInterrupt):
        repro.run_side_by_side(None, stages, 2, said.append)
    # v0 stopped at once (not after its 60 s), and of the rest at most the one its thread picked up meanwhile
    assert ("run@v0", "stopped", True) in seen and all(s[2] for s in seen) and len(seen) <= 2


def test_stop_during_the_backoff_starts_no_new_try(tmp_path):
    """A transient failure waits `backoff_s` before its next try; stopped meanwhile, no worker starts again."""
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-c", f"open({str(runs)!r}, 'a').write('x'); raise SystemExit(75)"]
    stop = threading.Event()
    rc = {}
    policy = {**POLICY, "attempts": 3, "backoff_s": 30}
    t = threading.Thread(target=lambda: rc.setdefault("v", faults.supervise(
        "v", cmd, VariantResults(tmp_path / "v"), policy, log=lambda s: None, scope="v-backoff", stop=stop)))
    t0 = time.time()
    t.start()
    while not runs.exists():
        assert time.time() - t0 < 20
        time.sleep(0.05)
    time.sleep(0.5)
    stop.set()
    t.join(10)
    assert rc["v"] == 130 and runs.read_text() == "x" and time.time() - t0 < 15
    assert json.loads((tmp_path / "v" / "status.json").read_text())["transient"] == "interrupted"


def test_hf_side_by_side_on_the_cpu_only():
    from evalgate.engines.hf import HFEngine

    assert HFEngine({"name": "hf", "device": "cpu"}).side_by_side() == lanes.usable_cores()
    assert HFEngine({"name": "hf", "device": "cpu", "side_by_side": 3}).side_by_side() == 3
    assert HFEngine({"name": "hf", "device": "cuda", "side_by_side": 3}).side_by_side() == 1


def test_a_run_opened_just_after_the_start_counts_though_its_mtime_lags_the_clock(tmp_path, monkeypatch):
    """repro._opened: a tracking.json written right after `since` may carry an mtime a kernel tick earlier
    (files are stamped from the coarse clock); it still counts as opened, at once, not after the timeout.
    One written well before `since` (an earlier run's) does not."""
    from evalgate import repro

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "results" / "v0" / "tracking.json"
    path.parent.mkdir(parents=True)
    path.write_text("{}")
    since = time.time()
    os.utime(path, (since - 0.004, since - 0.004))
    event, stop = threading.Event(), threading.Event()
    t0 = time.monotonic()
    repro._opened("v0", since, event, stop, timeout_s=3)
    assert event.is_set() and time.monotonic() - t0 < 1
    os.utime(path, (since - 60, since - 60))   # an earlier run's file: waited for until the timeout
    event.clear()
    t0 = time.monotonic()
    repro._opened("v0", since, event, stop, timeout_s=1)
    assert event.is_set() and time.monotonic() - t0 >= 1
