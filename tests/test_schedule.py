"""The scheduler's rules, with fake servers: never two profiles at once nor a profile beside any other
work on the device, the baseline first and last (A/A), variants' quality after the baseline's, a
failure fails only its variant, early-rejected variants are never profiled, memory in waves."""
import json
import os
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from evalgate.results import VariantResults
from evalgate.schedule import Scheduler, Slot, memory_shares, plan_memory, quality_worker

GIB = 2**30


class FakeServer:
    def __init__(self, name, start_s, fail_start=False, die_in_profile=False, live=None, stop_s=0.0):
        self.name, self.start_s, self.fail_start, self.die = name, start_s, fail_start, die_in_profile
        self._alive, self.live, self.stop_s = True, live, stop_s

    def wait(self):
        time.sleep(self.start_s)
        if self.fail_start:
            self._alive = False
            raise RuntimeError("vllm serve exited with 1 before it was healthy")
        return SimpleNamespace(name=self.name)

    def alive(self):
        return self._alive

    def hold(self, stopped):
        self.held = stopped
        self.holds.append((self.name, stopped))

    def stop(self):
        self._alive = False
        time.sleep(self.stop_s)   # a real server's processes take a while to exit
        self.live.discard(self.name)


def slot(name, tmp_path, gib=8):
    out = tmp_path / name
    out.mkdir(parents=True, exist_ok=True)
    job = SimpleNamespace(variant=SimpleNamespace(name=name), out=VariantResults(out), baseline=None)
    return Slot(job, need={"total": gib * GIB, "kv_cache_memory_bytes": 4 * GIB})


class Recorder:
    """Fake phases that log (phase, variant, start, end) and track servers alive at once."""

    def __init__(self, starts, quality_s=0.05, profile_s=0.05, early=(), fail_start=(), die=(), stop_s=0.0):
        self.starts, self.q, self.p, self.stop_s = starts, quality_s, profile_s, stop_s
        self.early, self.fail_start, self.die = set(early), set(fail_start), set(die)
        self.log, self.lock, self.live, self.max_live = [], threading.Lock(), set(), 0
        self.finished, self.failed = {}, {}
        self.neighbours = []   # (sweep, variant, the servers up while it was profiled)
        self.held = []         # (variant, the servers held still while it was profiled, the other servers up)
        self.holds = []        # (server, stopped): every hold and continue, in order

    def _note(self, phase, name, t0):
        with self.lock:
            self.log.append((phase, name, t0, time.time()))

    def start(self, s):
        with self.lock:
            self.live.add(s.name)
            self.max_live = max(self.max_live, len(self.live))
        srv = FakeServer(s.name, self.starts.get(s.name, 0.05), s.name in self.fail_start, s.name in self.die, self.live,
                         self.stop_s)
        srv.holds = self.holds
        t0 = time.time()
        orig = srv.wait

        def wait():
            try:
                return orig()
            finally:
                self._note("start", s.name, t0)
        srv.wait = wait
        return srv

    def quality(self, s):
        t0 = time.time()
        time.sleep(self.q)
        self._note("quality", s.name, t0)
        return {"reason": "inferior"} if s.name in self.early else None

    def profile(self, s, ep, sweep):
        t0 = time.time()
        with self.lock:
            self.neighbours.append((sweep, s.name, set(self.live)))
            slots = getattr(self, "slots", [])   # set by scheduler(); tests that build their own leave it out
            self.held.append((s.name, {x.name for x in slots if x.server is not None and getattr(x.server, "held", False)},
                              {x.name for x in slots if x.server is not None and x is not s}))
        time.sleep(self.p)
        if s.name in self.die:
            s.server._alive = False
        self._note(f"profile_{sweep}" if sweep else "profile", s.name, t0)

    def finish(self, s, final):
        self.finished[s.name] = final

    def fail(self, s, phase, error):
        self.failed[s.name] = (phase, error)

    def scheduler(self, slots, capacity=None, aa=True, alone=False, hold=False):
        self.slots = slots
        return Scheduler(slots, capacity, start=self.start, quality=self.quality, profile=self.profile,
                         finish=self.finish, fail=self.fail, aa=aa, alone=alone, hold=hold, log=lambda *a: None,
                         poll_s=0.01)


def overlaps(a, b):
    return a[2] < b[3] and b[2] < a[3]


def test_profiles_are_exclusive_and_the_baseline_comes_first_and_last(tmp_path):
    names = ["baseline", "a", "b", "c"]
    rec = Recorder(starts={"baseline": 0.2, "a": 0.05, "b": 0.3, "c": 0.1})
    out = rec.scheduler([slot(n, tmp_path) for n in names]).run()
    profiles = [e for e in rec.log if e[0].startswith("profile")]
    assert [e[1] for e in profiles][0] == "baseline" and [e[1] for e in profiles][-1] == "baseline"
    assert sorted(e[1] for e in profiles) == ["a", "b", "baseline", "baseline", "c"]
    for p in profiles:   # nothing else touched the device during a profile
        for other in rec.log:
            if other is not p:
                assert not overlaps(p, other), (p, other)
    base_q = next(e for e in rec.log if e[0] == "quality" and e[1] == "baseline")
    a_q = next(e for e in rec.log if e[0] == "quality" and e[1] == "a")
    # all quality phases at once: `a` (up first) does not wait for the baseline's to end (its worker waits
    # for the baseline's results only where it compares: evalgate.runner.quality)
    assert a_q[2] < base_q[3]
    assert all(out["variants"][n]["state"] == "done" for n in names) and rec.finished == {n: True for n in names}
    assert not rec.live                              # every server stopped
    assert rec.max_live == 4                         # no capacity limit: all started at once


def test_every_profile_sees_the_same_idle_neighbours_and_the_alone_check_sees_none(tmp_path):
    """One wave: a profiled server stays up, so the A/A sweep meets the neighbours the first one met
    (on an H100 the first sweep beside six idle servers and the last alone differed by 12.4 %); with
    `alone`, a third baseline sweep runs after every other server is stopped."""
    names = ["baseline", "a", "b", "c"]
    rec = Recorder(starts={})
    rec.scheduler([slot(n, tmp_path) for n in names]).run()
    assert [(sw, n) for sw, n, _ in rec.neighbours] == [("", "baseline"), ("", "a"), ("", "b"), ("", "c"),
                                                        ("aa", "baseline")]
    assert all(up == set(names) for _, _, up in rec.neighbours)
    assert not rec.live
    rec = Recorder(starts={})
    rec.scheduler([slot(n, tmp_path / "alone") for n in names], alone=True).run()
    assert [(sw, n) for sw, n, _ in rec.neighbours][-2:] == [("aa", "baseline"), ("alone", "baseline")]
    assert rec.neighbours[-2][2] == set(names) and rec.neighbours[-1][2] == {"baseline"}
    assert rec.finished == {n: True for n in names} and not rec.live


def test_a_failed_start_or_a_dying_server_fails_only_its_variant(tmp_path):
    rec = Recorder(starts={}, fail_start={"a"}, die={"b"})
    out = rec.scheduler([slot(n, tmp_path) for n in ["baseline", "a", "b", "c"]]).run()
    states = {n: v["state"] for n, v in out["variants"].items()}
    assert states == {"baseline": "done", "a": "failed", "b": "failed", "c": "done"}
    assert rec.failed["a"][0] == "start" and "healthy" in rec.failed["a"][1]
    assert rec.failed["b"][0] == "profile" and "died during its profile" in rec.failed["b"][1]
    assert not rec.live


def test_work_that_needs_no_server_runs_while_they_stop_and_leaving_waits_for_every_stop(tmp_path):
    """`Scheduler.running`: the gate and report run while the servers stop (they need none), but nothing
    is left running once it is left, after an error inside as well."""
    names = ["baseline", "a", "b"]
    rec = Recorder(starts={}, stop_s=0.5)
    with rec.scheduler([slot(n, tmp_path) for n in names]).running() as out:
        stopping = set(rec.live)
    assert out["variants"]["a"]["state"] == "done" and stopping == {"a", "b"}   # the idle neighbours, stopping
    assert not rec.live
    rec = Recorder(starts={}, stop_s=0.5)
    with pytest.raises(RuntimeError, match="the gate broke"), rec.scheduler(
            [slot(n, tmp_path / "err") for n in names]).running():
        assert rec.live
        raise RuntimeError("the gate broke")
    assert not rec.live


def test_early_rejected_variants_are_never_profiled(tmp_path):
    rec = Recorder(starts={}, early={"a"})
    rec.scheduler([slot(n, tmp_path) for n in ["baseline", "a", "b"]]).run()
    assert not [e for e in rec.log if e[0] == "profile" and e[1] == "a"]
    assert rec.finished["a"] is True and "a" not in rec.failed


def test_an_unreproducible_evaluation_runs_again_alone_on_its_server(tmp_path):
    """faults.retry_unreproducible: `a`'s first quality phase met results its engine did not reproduce; its
    second runs once nothing else starts, evaluates or is profiled, on the same server (no new start), and
    only once: a second unreproducible one stands."""
    rec = Recorder(starts={"b": 0.3}, quality_s=0.1)
    asked = []

    def again_alone(s):
        asked.append(s.name)
        return s.name == "a"   # `a` is unreproducible every time

    slots = [slot(n, tmp_path) for n in ["baseline", "a", "b", "c"]]
    sch = Scheduler(slots, None, start=rec.start, quality=rec.quality, profile=rec.profile, finish=rec.finish,
                    fail=rec.fail, log=lambda *a: None, poll_s=0.01, again_alone=again_alone)
    out = sch.run()
    a_q = [e for e in rec.log if e[0] == "quality" and e[1] == "a"]
    assert len(a_q) == 2 and asked.count("a") == 1   # asked after its first phase only
    second = a_q[1]
    for other in rec.log:   # the second one alone on the device
        if other is not second and not (other[0] == "quality" and other[1] == "a" and other is a_q[0]):
            assert not overlaps(second, other), (second, other)
    assert [e for e in rec.log if e[0] == "start" and e[1] == "a"].__len__() == 1   # its server stayed up
    profiles = [e[1] for e in rec.log if e[0].startswith("profile")]
    assert profiles.count("a") == 1 and profiles[-1] == "baseline"   # then profiled; the A/A sweep still last
    assert all(v["state"] == "done" for v in out["variants"].values()) and not rec.live


def test_memory_waves_bound_the_servers_alive_at_once(tmp_path):
    needs = {n: {"total": 8 * GIB, "kv_cache_memory_bytes": 4 * GIB} for n in ["baseline", "a", "b", "c", "d"]}
    assert plan_memory(needs, 20 * GIB) == [["baseline", "a"], ["b", "c"], ["d"]]
    shares = memory_shares(needs, 80 * GIB)
    assert shares["a"]["kv_cache_memory_bytes"] == 4 * GIB and shares["a"]["gpu_memory_utilization"] == pytest.approx(0.105)
    rec = Recorder(starts={})
    out = rec.scheduler([slot(n, tmp_path) for n in needs], capacity=20 * GIB).run()
    assert rec.max_live == 2 and all(v["state"] == "done" for v in out["variants"].values())
    profiles = [e for e in rec.log if e[0].startswith("profile")]
    assert profiles[-1][1] == "baseline" and profiles[-1][0] == "profile_aa"


@pytest.mark.parametrize("how", ["popen", "fork"])
def test_quality_worker_timeout_and_crash_are_failures(tmp_path, how):
    """The same outcome whether the worker is a fresh interpreter or forked from the forkserver (what
    `scheduled` does): a hung worker is killed at its timeout, a crash is a failure with its output."""
    from evalgate.forkserver import Launcher

    launcher = Launcher(preload=["evalgate.results"]) if how == "fork" else None
    s = slot("a", tmp_path)
    s.endpoint = SimpleNamespace(record=lambda: {"base_url": "http://x"})
    pidfile = tmp_path / "hang.pid"
    hang = quality_worker([sys.executable, "-c", f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid()));"
                           " time.sleep(30)"], timeout_s=2, launcher=launcher)
    with pytest.raises(Exception, match="timed out"):
        hang(s)
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):   # killed, not left running
        os.kill(pid, 0)
    crash = quality_worker([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], timeout_s=10,
                           launcher=launcher)
    with pytest.raises(RuntimeError, match="exited with 3.*boom"):
        crash(s)
    assert json.loads((tmp_path / "a" / "server.json").read_text()) == {"base_url": "http://x"}
    # interrupted (Ctrl-C, SIGTERM: `scheduled` leaves through its `finally`): a worker still running is killed
    pidfile.unlink()
    slow = quality_worker([sys.executable, "-c", f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid()));"
                           " time.sleep(60)"], timeout_s=120, launcher=launcher)
    waiting = threading.Thread(target=lambda: pytest.raises(RuntimeError, slow, s), daemon=True)
    waiting.start()
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text():
            break
        time.sleep(0.1)
    slow.stop_all()
    waiting.join(10)
    assert not waiting.is_alive()
    with pytest.raises(ProcessLookupError):
        os.kill(int(pidfile.read_text()), 0)


def test_a_transient_failure_gets_its_server_started_again_a_permanent_one_does_not(tmp_path):
    """faults.attempts per server: b's server dies during its first profile only (transient: started again,
    then done); c's dies every time (transient, failed after 3 tries, recorded as such); a's start fails
    with a refused option (permanent: one try)."""
    rec = Recorder(starts={}, fail_start={"a"}, die={"b", "c"})
    profile, retried = rec.profile, []

    def profile_b_dies_once(s, ep, sweep):
        profile(s, ep, sweep)
        if s.name == "b":
            rec.die.discard("b")

    slots = [slot(n, tmp_path) for n in ["baseline", "a", "b", "c"]]
    out = Scheduler(slots, None, start=rec.start, quality=rec.quality, profile=profile_b_dies_once, finish=rec.finish,
                    fail=rec.fail, log=lambda *a: None, poll_s=0.01, policy={"attempts": 3, "backoff_s": 0},
                    retry=lambda s: retried.append(s.name)).run()
    by = {s.name: s for s in slots}
    assert {n: v["state"] for n, v in out["variants"].items()} == {"baseline": "done", "a": "failed", "b": "done",
                                                                      "c": "failed"}
    assert retried == ["b", "c", "c"] and by["b"].attempts == 2 and by["c"].attempts == 3 and by["a"].attempts == 1
    assert by["c"].transient == "server_died" and by["a"].transient is None and set(rec.failed) == {"a", "c"}
    assert not rec.live



def test_a_retry_clears_the_failed_try_but_keeps_its_server_log(tmp_path):
    """VariantResults.clear_phases (the scheduler's `retry`): the next try starts clean, the variant's fields
    and MLflow run stay, and each failed try's server log stays as server.try<N>.log (where its crash is)."""
    out = VariantResults(tmp_path / "kv_fp8")
    for n in (1, 2):
        out.write("variant.json", {"name": "kv_fp8"})
        out.write("tracking.json", {"run_id": "r"})
        out.write_quality({"metrics": {}, "times": {}, "early": None})
        (out.path / "server.log").write_text(f"EngineDeadError in try {n}\n")
        out.clear_phases()
        assert sorted(f.name for f in out.path.iterdir()) == sorted(
            ["variant.json", "tracking.json", *(f"server.try{i}.log" for i in range(1, n + 1))])
    assert (out.path / "server.try2.log").read_text() == "EngineDeadError in try 2\n"


@pytest.mark.parametrize("retry", [True, False])
def test_serially_an_unreproducible_evaluation_runs_once_more_on_the_same_server(tmp_path, monkeypatch, retry):
    """evalgate.runner.run_serial with faults.retry_unreproducible: the quality phase that met results its
    engine did not reproduce runs a second time on the same server (served once), its first record set
    aside; the second one decides (here: reproducible, so the variant is profiled). Off: the first stands."""
    import contextlib

    from evalgate import runner

    out = VariantResults(tmp_path / "draft")
    served, asked, profiled = [], [], []

    def quality(job, ep):
        asked.append(job.out.read("unreproducible.first.json"))
        if len(asked) == 1:   # the first evaluation: a look's stop its repeat did not bear out
            job.out.write("unreproducible.json", [{"phase": "look", "look": 2, "task": "fx_ppl", "docs": 100,
                                                   "changed_docs": 32}])
            return {"early": {"reason": "stopped early …; not reproducible"}}
        return {"early": None}

    @contextlib.contextmanager
    def serve(model, variant, path):
        served.append(variant.name)
        yield SimpleNamespace(info=SimpleNamespace(start_seconds=1.0))

    monkeypatch.setattr(runner, "track", lambda job: None)
    monkeypatch.setattr(runner, "quality", quality)
    monkeypatch.setattr(runner, "profile", lambda job, ep, sweep="": profiled.append(sweep))
    monkeypatch.setattr(runner, "finish", lambda job, times, final=True: {})
    cfg = SimpleNamespace(faults={"retry_unreproducible": retry}, load={})
    job = SimpleNamespace(cfg=cfg, out=out, variant=SimpleNamespace(name="draft"), model=None, is_baseline=False)
    assert runner.run_serial(job, SimpleNamespace(serve=serve)) == 0
    assert served == ["draft"]
    if retry:
        assert asked == [None, [{"phase": "look", "look": 2, "task": "fx_ppl", "docs": 100, "changed_docs": 32}]]
        assert profiled == [""] and out.read("unreproducible.json") is None
        assert [e["phase"] for e in out.timeline()["events"]] == ["start", "quality", "quality_again", "profile"]
    else:
        assert len(asked) == 1 and profiled == [] and out.read("unreproducible.json")


def test_the_variants_runs_open_without_monitors_and_the_host_gets_one(tmp_path, monkeypatch):
    """schedule._track_all: every variant's MLflow run without a system-metrics monitor of its own, then one
    monitor for the host on their parent run (tracking.host_metrics), handed back for the schedule to finish."""
    from evalgate import schedule, tracking

    asked = []

    def track(job, system_metrics=True):
        asked.append((job.variant.name, system_metrics))
        job.tracker = SimpleNamespace(info={"parent_run_id": "P"})

    monkeypatch.setattr(tracking, "host_metrics", lambda options, run_id: ("monitor", options, run_id))
    slots = [slot(n, tmp_path) for n in ("baseline", "a")]
    for s in slots:
        s.job.cfg, s.job.tracker = SimpleNamespace(mlflow={"system_metrics": True}), None
    host = []
    schedule._track_all(SimpleNamespace(track=track), slots, host)
    assert asked == [("baseline", False), ("a", False)]
    assert host == [("monitor", {"system_metrics": True}, "P")]


@pytest.mark.parametrize("hold", [True, False])
def test_idle_neighbours_are_held_still_during_each_profile_and_continued_after(tmp_path, hold):
    """load.hold_neighbours: while one server is profiled every other server that is up (idle: nothing
    starts or evaluates during a profile) is held (SIGSTOP), and continued when the profile ends, also
    when it fails; without it none is held. The profiled server itself is never held."""
    names = ["baseline", "a", "b", "c"]
    rec = Recorder(starts={}, die={"b"})
    slots = [slot(n, tmp_path) for n in names]
    rec.scheduler(slots, hold=hold).run()
    assert [n for n, _, _ in rec.held] == ["baseline", "a", "b", "c", "baseline"]
    for name, held, up in rec.held:
        assert name not in held and (held == up if hold else not held), (name, held, up)
        assert up   # there were neighbours to hold
    assert rec.failed["b"][0] == "profile"   # b died in its profile: the others were continued all the same
    for n in names:   # each hold was followed by its continue, the last one included
        seq = [stopped for x, stopped in rec.holds if x == n]
        assert seq == [True, False] * (len(seq) // 2) and (len(seq) > 0) == hold, (n, seq)


def test_servers_started_ahead_are_waited_for_not_started_again_and_hold_their_memory(tmp_path):
    """evalgate.repro starts the servers that need only the fixture while the other inputs are built
    (start_ahead, in order while they fit); the scheduler takes them over: no second start, their start
    counted from when it began, their memory counted first, so a server it starts itself waits for room."""
    from evalgate.schedule import Ahead, start_ahead

    rec = Recorder(starts={})
    started = []
    gib = {"baseline": 8, "a": 8, "c": 4}

    class Engine:
        def memory_need(self, model, variant):
            return {"total": gib[variant.name] * GIB, "kv_cache_memory_bytes": 4 * GIB}

        def device_memory(self):
            return 34 * GIB, 40 * GIB

        def start(self, model, variant, path, share):
            started.append((variant.name, share["gpu_memory_utilization"]))
            return rec.start(SimpleNamespace(name=variant.name))

    cfg = SimpleNamespace(engine={"schedule_memory_fraction": 0.5})   # 17 GiB of the 34 free
    jobs = [slot(n, tmp_path).job for n in gib]
    for j in jobs:
        j.model = None
    said = []
    ahead = start_ahead(cfg, Engine(), jobs, log=said.append)
    assert [s.name for s in ahead.slots] == ["baseline", "a"]          # c (4 GiB more) does not fit now
    assert said == ["schedule: started baseline, a ahead, beside the inputs"]   # bench/gpu_verdict.py reads it
    assert started == [("baseline", pytest.approx(0.21)), ("a", pytest.approx(0.21))]
    assert ahead.capacity == (17 * GIB, 40 * GIB)
    base = ahead.slots[0]
    base.started_at -= 5.0   # as if it had started 5 s before the schedule
    c = slot("c", tmp_path, gib=4)
    out = rec.scheduler([*ahead.slots, c], capacity=ahead.capacity[0]).run()
    assert [n for n, _ in started] == ["baseline", "a"]                 # not started again
    assert sorted(n for p, n, *_ in rec.log if p == "start") == ["a", "baseline", "c"]
    start = next(e for e in out["variants"]["baseline"]["events"] if e["phase"] == "start")
    assert start["end"] - start["start"] >= 5.0   # from when it began, not from the schedule's start
    c_start = next(e for e in out["variants"]["c"]["events"] if e["phase"] == "start")
    a_profile = next(e for e in out["variants"]["a"]["events"] if e["phase"] == "profile")
    assert c_start["start"] >= a_profile["end"]   # c waited until a's memory was free
    assert rec.max_live == 2 and all(v["state"] == "done" for v in out["variants"].values())
    Ahead([base], None).stop()   # stopping what is already stopped is harmless
    assert base.server is None and base.started_at is None


def test_a_variant_that_fits_only_without_the_baseline_runs_after_it_and_the_run_has_no_aa(tmp_path):
    """10 GiB for two 8 GiB servers: the variant cannot start beside the baseline, which is kept up for its
    A/A. The schedule used to wait for that memory forever; now the baseline stops (the A/A is dropped,
    said in the log) and the variant runs."""
    rec = Recorder(starts={})
    said = []
    sch = rec.scheduler([slot("baseline", tmp_path), slot("a", tmp_path)], capacity=10 * GIB)
    sch.log = said.append
    done = threading.Event()
    out = {}
    threading.Thread(target=lambda: (out.update(sch.run()), done.set()), daemon=True).start()
    assert done.wait(10), "the schedule waited forever"
    assert all(v["state"] == "done" for v in out["variants"].values()) and rec.max_live == 1
    assert [p for p, n, *_ in rec.log if n == "baseline" and p.startswith("profile")] == ["profile"]   # no A/A
    assert any("does not fit beside the baseline" in m for m in said)


def test_idle_neighbours_make_room_before_the_baseline_does(tmp_path):
    """The rule itself (Scheduler._make_room), on a schedule stopped in that state: memory held by an idle
    profiled server and by the baseline waiting for its A/A, a variant waiting for it, nothing else going on.
    The idle server goes first; only then the baseline, and with it the A/A."""
    rec = Recorder(starts={})
    said = []
    slots = [slot("baseline", tmp_path), slot("a", tmp_path), slot("b", tmp_path)]
    sch = rec.scheduler(slots, capacity=16 * GIB)
    sch.log = said.append
    base, a, b = slots
    for x, state in ((base, "ready_again"), (a, "done")):
        x.server, x.state, x.counted = rec.start(x), state, True
        sch.used += x.need["total"]
    base.again = ["aa"]
    assert sch._make_room() and a.server is None and base.server is not None and sch.used == 8 * GIB
    assert sch._make_room() is True and base.server is None and base.state == "done" and base.again == []
    assert rec.finished == {"baseline": True} and sch.used == 0
    assert sch._make_room() is False   # nothing left to free
    b.state = "starting"
    assert sch._make_room() is False   # something going on: its end may free memory
    assert "stopping the idle a" in said[0] and "no aa sweep" in said[1]
