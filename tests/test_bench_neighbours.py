"""bench/neighbours.py's two parts that decide its answer, on CPU: the neighbours' process groups really stop
(no CPU time while stopped) and resume, and the paired comparison says "within ±3 %" only when its 95 %
interval lies inside ±3 %."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import neighbours  # noqa: E402


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])   # utime + stime


def test_stopped_neighbours_run_nothing_until_resumed():
    """A busy "server" with a busy child in its own session (as `vllm serve` and its engine core): after
    pause(…, True) neither gets CPU time; after pause(…, False) both run again."""
    code = "import os\nos.fork()\nwhile True: pass"
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        time.sleep(0.5)
        pids = [proc.pid, *map(int, Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split())]
        assert len(pids) == 2
        server = types.SimpleNamespace(proc=proc)
        neighbours.pause([server], True)
        time.sleep(0.3)
        before = [_cpu_ticks(p) for p in pids]
        time.sleep(1.0)
        assert [_cpu_ticks(p) for p in pids] == before
        assert all(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T" for p in pids)
        neighbours.pause([server], False)
        time.sleep(1.0)
        assert all(_cpu_ticks(p) > b for p, b in zip(pids, before))
    finally:
        import os
        import signal

        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def pairs(ratios: list[float]) -> list[dict]:
    return [{"running": {"output_throughput": 100 * r}, "stopped": {"output_throughput": 100.0}} for r in ratios]


def test_within_3pct_only_when_the_whole_interval_is():
    tight = neighbours.compare(pairs([1.01, 0.99, 1.005, 0.995, 1.0, 1.01, 0.99, 1.0]), "output_throughput")
    assert tight["n"] == 8 and abs(tight["diff_pct"]) < 0.5 and tight["within_3pct"]
    assert tight["ci95_pct"][0] < tight["diff_pct"] < tight["ci95_pct"][1]
    noisy = neighbours.compare(pairs([1.2, 0.8, 1.15, 0.85, 1.1, 0.9]), "output_throughput")   # mean ≈ 0, wide
    assert abs(noisy["diff_pct"]) < 3 and not noisy["within_3pct"]
    shifted = neighbours.compare(pairs([1.05, 1.051, 1.049, 1.05, 1.052]), "output_throughput")  # tight, but +5 %
    assert 4.5 < shifted["diff_pct"] < 5.5 and not shifted["within_3pct"]
    assert neighbours.compare(pairs([1.0, 1.0]), "output_throughput") == {"n": 2}
    # TOST: the 90 % interval inside the margin can hold where the 95 % one does not
    edge = neighbours.compare(pairs([1.0 + 0.09 * (-1) ** i for i in range(40)]), "output_throughput")
    assert edge["ci90_pct"][0] > edge["ci95_pct"][0] and edge["equivalent"] and not edge["within_3pct"]


def test_held_against_gone_pairs_rounds_across_blocks_and_restarts_the_neighbours(monkeypatch):
    """--versus gone: cycles held-gone then gone-held; between blocks the neighbours are terminated or
    started again (held at once); round i of a level in one block is paired with round i of the other block
    of its cycle; every round starts from an empty prefix cache. Held rounds here are 10 % slower, so the
    comparison must say ≈ -9.1 % (held / gone) on throughput; the card's clock and the host's core speed
    come with each round, their means per condition with each level."""
    started = []

    class Server:
        def __init__(self):
            self.proc = types.SimpleNamespace(pid=None)
            self.sampler = types.SimpleNamespace(stop=lambda: None)

        def wait(self):
            return None

        def stop(self):
            self.stopped = True

    class Endpoint:
        resets = 0

        def reset_cache(self):
            Endpoint.resets += 1
            assert all(not getattr(x, "stopped", False) for x in servers)   # terminated ones left the list

        def run_requests(self, batch, concurrency, ignore_eos, warmup=0):
            assert held["now"] or len(servers) == 1   # neighbours up only while held
            slow = 1.1 if len(servers) > 1 else 1.0
            return [{"ok": True}] * len(batch), slow, {"sm_clock_mhz": 1755.0 if slow > 1 else 1980.0, "vllm": {}}

    held = {"now": False}
    monkeypatch.setattr(neighbours, "pause", lambda servers, stopped: held.update(now=stopped and bool(servers)))
    monkeypatch.setattr("evalgate.profile.summarize", lambda recs, dur, slo: {
        "output_throughput": len(recs) / dur, "median_tpot_ms": dur, "median_ttft_ms": dur})
    monkeypatch.setattr("evalgate.profile.level_warmup", lambda load, i, c: 0)
    engine = types.SimpleNamespace(start=lambda model, variant, d, share: started.append(d) or Server())
    sys.path.insert(0, str(Path(neighbours.__file__).parent))
    monkeypatch.setattr("common.baseline_share", lambda engine, model, variant, n: {"gpu_memory_utilization": 0.1})
    cfg = types.SimpleNamespace(workload={}, load={"requests": {"min": 4}, "waves": 1}, slo={}, engine={"name": "vllm"},
                                model=None, variant=lambda n: None)
    servers = [Server(), Server(), Server()]   # the profiled one and two neighbours
    a = types.SimpleNamespace(cycles=2, rounds=3, neighbours=2, settle=0.0, idle_s=0.0)
    out = neighbours.versus_gone(a, cfg, engine, servers, Endpoint(), [{"prompt": str(i)} for i in range(64)], [1, 8], 0.0)
    assert [e["what"] for e in out["events"]] == ["neighbours terminated", "neighbours started again"]
    assert len(started) == 2 and len(servers) == 3            # two neighbours started again, in place
    for level in ("c1", "c8"):
        pairs = out["levels"][level]["pairs"]
        assert len(pairs) == 6 and [p["cycle"] for p in pairs] == [0, 0, 0, 1, 1, 1]
        r = out["levels"][level]["compare"]["output_throughput"]
        assert abs(r["diff_pct"] + 9.09) < 0.01
        # what may explain it, per condition: here the card's clock (the host's core speed is measured too)
        assert out["levels"][level]["context"]["sm_clock_mhz"] == {"held": 1755.0, "gone": 1980.0}
        assert set(out["levels"][level]["context"]["cpu_probe_us"]) == {"held", "gone"}
    assert Endpoint.resets == 4 * (2 + 3 * 2)   # per block: a warm-up per level, then every round


def test_a_rounds_context_has_the_servers_own_cpu_time_and_latencies(monkeypatch):
    """What tells a server-side difference from the client's: the CPU seconds of the profiled server's whole
    process group during the round (a process in its own session burning CPU, its sibling in another session
    not counted) and the server's own mean inter-token latency and TTFT from its /metrics, as differences
    of the histograms' sum / count over the round."""
    import http.server
    import threading

    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\ntime.sleep(60)"
    mine = subprocess.Popen([sys.executable, "-c", burn], start_new_session=True)
    other = subprocess.Popen([sys.executable, "-c", burn], start_new_session=True)
    scrapes = iter([(0.50, 100, 0.40, 4), (0.80, 200, 0.70, 8)])   # (ITL sum, count, TTFT sum, count)

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self):   # noqa: N802 - http.server's name
            itl_s, itl_n, ttft_s, ttft_n = next(scrapes)
            body = "".join(f"# TYPE vllm:{n} histogram\nvllm:{n}_sum{{engine=\"0\"}} {s}\nvllm:{n}_count{{engine=\"0\"}} {c}\n"
                           for n, s, c in (("inter_token_latency_seconds", itl_s, itl_n),
                                           ("time_to_first_token_seconds", ttft_s, ttft_n))).encode()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    class Endpoint:
        base_url = f"http://127.0.0.1:{httpd.server_address[1]}"

        def reset_cache(self):
            pass

        def run_requests(self, batch, concurrency, ignore_eos):
            time.sleep(2.0)   # the server's process burns its 0.6 s meanwhile
            return [{"ok": True}] * len(batch), 1.0, {"vllm": {}}

    monkeypatch.setattr("evalgate.profile.summarize", lambda recs, dur, slo: {"output_throughput": len(recs) / dur})
    monkeypatch.setattr("evalgate.profile.cpu_probe_us", lambda: 1.0)
    cfg = types.SimpleNamespace(workload={}, slo={})
    try:
        time.sleep(0.1)
        r = neighbours.one_round(cfg, Endpoint(), [{}] * 4, 1, 0.0, types.SimpleNamespace(proc=mine))
    finally:
        httpd.shutdown()
        for p in (mine, other):
            p.kill()
            p.wait()
    assert 0.3 < r["server_cpu_s"] < 0.9            # its own 0.6 s, not the other session's too
    assert r["server_itl_ms"] == 3.0                # (0.80 - 0.50) / (200 - 100) s
    assert r["server_ttft_ms"] == 75.0              # (0.70 - 0.40) / (8 - 4) s
    assert {"host_cpu_pct", "cpu_probe_us"} <= set(r)


def test_blocks_count_as_one_observation_each_and_runs_pool_by_cycle(tmp_path):
    """In blocks every round shares its block's host state: 10 pairs per cycle, held +8 % in one cycle and
    -6 % in the next, count as 20 pairs pair by pair but are two observations; by cycle there is no
    interval, and pooled over runs the cycles (not the pairs) are the unit, each run's kept apart."""
    def run(effects):
        pairs = [{"held": {m: (1 + e) * (1.001 if k % 2 else 0.999) for m in neighbours.METRICS},
                  "gone": {m: 1.0 for m in neighbours.METRICS}, "cycle": c}
                 for c, e in enumerate(effects) for k in range(10)]
        return {"versus": "gone", "levels": {"c1": {"pairs": pairs}}}

    one = run([0.08, -0.06])["levels"]["c1"]["pairs"]
    assert neighbours.compare(one, "output_throughput", a="held", b="gone")["n"] == 20
    cyc = neighbours.by_cycle(one)["output_throughput"]
    assert cyc == {"n": 2, "per_cycle_pct": [8.0, -6.0]}
    files = []
    for i, effects in enumerate(([0.08, -0.06], [0.02, 0.01], [-0.03, 0.04])):
        files.append(tmp_path / f"r{i}.json")
        files[-1].write_text(json.dumps(run(effects)))
    pooled = neighbours.pool(files)["by_cycle"]["output_throughput"]
    assert pooled["n"] == 6 and pooled["per_cycle_pct"] == [8.0, -6.0, 2.0, 1.0, -3.0, 4.0]
    assert pooled["ci95_pct"][0] < 0 < pooled["ci95_pct"][1] and not pooled["within_3pct"]
    (tmp_path / "released.json").write_text(json.dumps({"versus": "released", "levels": {}}))
    with pytest.raises(SystemExit, match="different --versus cannot be pooled: gone, released"):
        neighbours.pool(files + [tmp_path / "released.json"])


def test_paired_runs_pool_by_level_of_each_run(tmp_path):
    """Pooled paired runs (held against released) count each run's level as one observation, in the
    order the runs and levels came; the per-pair comparison over all of them is kept beside it."""
    def run(effects):
        levels = {f"c{c}": {"pairs": [{"held": {m: (1 + e) * (1.001 if k % 2 else 0.999) for m in neighbours.METRICS},
                                       "released": {m: 1.0 for m in neighbours.METRICS}} for k in range(8)]}
                  for c, e in zip((1, 16), effects)}
        levels["all"] = {"pairs": []}   # as a run writes it: the pairs are the levels'
        return {"versus": "released", "levels": levels}

    files = []
    for i, effects in enumerate(([0.04, -0.02], [0.01, 0.03])):
        files.append(tmp_path / f"r{i}.json")
        files[-1].write_text(json.dumps(run(effects)))
    out = neighbours.pool(files)
    assert out["versus"] == "released"
    stretch = out["by_cycle"]["output_throughput"]
    assert stretch["n"] == 4 and stretch["per_cycle_pct"] == [4.0, -2.0, 1.0, 3.0]
    assert out["by_pair"]["output_throughput"]["n"] == 32
    # a run as the unit: each run's pairs' geometric mean (1.04 · 0.98 and 1.01 · 1.03, 8 pairs of each)
    assert out["by_run"]["output_throughput"] == {"n": 2, "per_cycle_pct": [1.0, 2.0]}
    assert out["by_pair"]["output_throughput"]["ci95_pct"][1] - out["by_pair"]["output_throughput"]["ci95_pct"][0] \
        < stretch["ci95_pct"][1] - stretch["ci95_pct"][0]
    (tmp_path / "bad.json").write_text(json.dumps({"versus": "sideways", "levels": {}}))
    with pytest.raises(SystemExit, match="not a bench/neighbours.py run"):
        neighbours.pool([tmp_path / "bad.json"])


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _stopped(pid: int, want: bool = True, timeout: float = 3.0) -> bool:
    """Whether the process is (`want`) or is not stopped, waiting up to `timeout` for it: a signal to a
    process group is delivered asynchronously (a full test run once read a process still running)."""
    end = time.time() + timeout
    while (_state(pid) == "T") != want:
        if time.time() > end:
            return False
        time.sleep(0.01)
    return True


def test_held_against_released_toggles_the_neighbours_gpu_state_once_per_pair(monkeypatch):
    """--versus released: rounds in pairs AB BA …; between the two rounds of a pair the neighbours' CUDA
    processes (found in their process groups; the profiled server's never touched) are checkpointed off the
    card (lock, checkpoint) or restored onto it (restore, unlock), while running (the driver's thread in
    them does the work), and stopped again for every round; at the end all are restored and running."""
    family = ("import subprocess, sys, time\n"
              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\ntime.sleep(60)")
    procs = [subprocess.Popen([sys.executable, "-c", family], start_new_session=True) for _ in range(3)]

    def children(p):
        import psutil

        return [c.pid for c in psutil.Process(p.pid).children()]

    end = time.time() + 20
    while not all(children(p) for p in procs) and time.time() < end:   # each starts its child (slow on a busy CI)
        time.sleep(0.1)

    cuda = {children(p)[0] for p in procs}   # the children hold the "CUDA context", as engine cores do
    expected = sorted(children(procs[1]) + children(procs[2]))   # the neighbours' ones, not the profiled server's
    calls = []

    class Driver:
        class CUresult:
            CUDA_SUCCESS = 0

        @staticmethod
        def cuInit(flags):
            return (0,)

        @staticmethod
        def cuCheckpointProcessGetState(pid):
            return (0, 0) if pid in cuda else (3, None)

    for name in ("Lock", "Checkpoint", "Restore", "Unlock"):
        def step(pid, args, name=name):
            assert _stopped(pid, False), "the driver works through a thread of the process: it must run"
            calls.append((name, pid))
            return (0,)
        step.__name__ = f"cuCheckpointProcess{name}"
        setattr(Driver, f"cuCheckpointProcess{name}", staticmethod(step))

    bindings = types.ModuleType("cuda.bindings")
    bindings.driver = Driver
    monkeypatch.setitem(sys.modules, "cuda", types.ModuleType("cuda"))
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.driver", Driver)
    monkeypatch.setattr("evalgate.profile.summarize", lambda recs, dur, slo: {
        "output_throughput": len(recs) / dur, "median_tpot_ms": dur, "median_ttft_ms": dur})
    monkeypatch.setattr("evalgate.profile.level_warmup", lambda load, i, c: 0)
    monkeypatch.setattr("evalgate.profile.cpu_probe_us", lambda: 1.0)
    released = {"now": False}
    # the card as NVML reports it (free, total): 6 GiB used with the neighbours released, 40 GiB held
    engine = types.SimpleNamespace(device_memory=lambda: ((100 if released["now"] else 66) * 2**30, 106 * 2**30))

    class Endpoint:
        def reset_cache(self):
            pass

        def run_requests(self, batch, concurrency, ignore_eos, warmup=0):
            assert all(_stopped(p.pid) for p in procs[1:]), "neighbours held in both conditions"
            assert _stopped(procs[0].pid, False)
            return [{"ok": True}] * len(batch), (1.0 if released["now"] else 1.1), {"vllm": {}}

    servers = [types.SimpleNamespace(proc=p) for p in procs]
    cfg = types.SimpleNamespace(workload={}, load={"requests": {"min": 4}, "waves": 1}, slo={})
    a = types.SimpleNamespace(seconds=0.0, settle=0.0)
    real = neighbours.gpu_release

    def tracked(servers_, driver, pids, release):
        seconds = real(servers_, driver, pids, release)
        released["now"] = release
        return seconds

    monkeypatch.setattr(neighbours, "gpu_release", tracked)
    try:
        out = neighbours.versus_released(a, cfg, engine, servers, Endpoint(), [{"prompt": str(i)} for i in range(64)],
                                         [1, 8], 0.0)
        after = [_stopped(p.pid, False) for p in procs]
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGCONT)
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert out["cuda_pids"] == expected
    touched = {pid for _, pid in calls}
    assert touched == set(out["cuda_pids"]) and len(touched) == 2          # the two neighbours' engine cores only
    pairs = out["levels"]["c1"]["pairs"] + out["levels"]["c8"]["pairs"]
    assert len(pairs) == 8                                                  # 4 pairs per level (seconds=0)
    assert len(out["toggles"]) == len(pairs)                                # one toggle per pair, the last a restore
    assert [t["release"] for t in out["toggles"]] == [True, False] * 4
    assert [t["card_used_mib"] for t in out["toggles"]] == [6 * 1024, 40 * 1024] * 4   # read after each toggle
    per_pid = [n for n, pid in calls if pid == out["cuda_pids"][0]]
    assert per_pid == ["Lock", "Checkpoint", "Restore", "Unlock"] * 4
    assert abs(out["levels"]["c1"]["compare"]["output_throughput"]["diff_pct"] + 9.09) < 0.01   # held / released
    assert all(after)                                                       # all continued at the end


def test_pin_groups_smt_siblings_and_gives_the_profile_whole_cores_of_its_own(tmp_path):
    """--pin's plan from sysfs's topology: SMT siblings are one core; the profiled server gets the last two
    whole cores, the client the one before, the neighbours the rest; too few cores is one clear line."""
    import common

    for cpu in range(8):   # 4 cores × 2 threads, siblings i and i + 4 (as many x86 hosts number them)
        topo = tmp_path / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text("0\n")
        (topo / "core_id").write_text(f"{cpu % 4}\n")
    (tmp_path / "cpu8").mkdir()   # no topology: a core of its own
    cores = common.physical_cores(range(9), sysfs=tmp_path)
    assert cores == [[0, 4], [1, 5], [2, 6], [3, 7], [8]]
    plan = common.pin_plan(cores)
    assert plan == {"server": [3, 7, 8], "client": [2, 6], "rest": [0, 1, 4, 5]}
    with pytest.raises(SystemExit, match=r"--pin: needs 4 physical cores .* may use 3"):
        common.pin_plan(cores[:3])


def test_pin_puts_every_thread_of_each_group_on_its_cpus(tmp_path):
    """pin(): every thread of the profiled server's group (a server and its child, each with a second
    thread) on the server's CPUs, the neighbours' on the rest, this process's (the client) on the client's."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs to tell the masks apart")
    plan = {"server": [cpus[-1]], "client": [cpus[0]], "rest": cpus}
    family = tmp_path / "family.py"   # a "server" starting a child ("engine core"), each with a second thread
    family.write_text("import subprocess, sys, threading, time\n"
                      "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
                      "if len(sys.argv) < 2:\n    subprocess.Popen([sys.executable, __file__, 'child'])\n"
                      "time.sleep(60)\n")
    procs = [subprocess.Popen([sys.executable, str(family)], start_new_session=True) for _ in range(2)]
    mine = os.sched_getaffinity(0)
    try:
        import psutil

        end = time.time() + 20
        while not all(psutil.Process(p.pid).children() for p in procs) and time.time() < end:
            time.sleep(0.1)
        time.sleep(0.5)   # their second threads started
        servers = [types.SimpleNamespace(proc=p) for p in procs]
        out = neighbours.pin(servers, plan)
        groups = {}
        for name, p in (("server", procs[0]), ("rest", procs[1])):
            pids = [p.pid] + [c.pid for c in psutil.Process(p.pid).children()]
            groups[name] = {tid: os.sched_getaffinity(tid) for pid in pids for tid in map(int, os.listdir(f"/proc/{pid}/task"))}
        client = {frozenset(os.sched_getaffinity(int(t))) for t in os.listdir(f"/proc/{os.getpid()}/task")}
    finally:
        sys.modules["common"].pin_threads([os.getpid()], mine)   # this test process back on all its CPUs
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert len(groups["server"]) == 4 and set(map(frozenset, groups["server"].values())) == {frozenset(plan["server"])}
    assert len(groups["rest"]) == 4 and set(map(frozenset, groups["rest"].values())) == {frozenset(plan["rest"])}
    assert client == {frozenset(plan["client"])}
    assert out == {"cpus": plan, "threads": {"server": 4, "rest": 4, "client": out["threads"]["client"]}}
    assert out["threads"]["client"] >= 1


def test_pin_with_too_few_cores_stops_before_any_server_starts(monkeypatch):
    import common

    monkeypatch.setattr(common, "physical_cores", lambda: [[0], [1]])
    monkeypatch.setattr(common, "baseline_servers", lambda *a, **k: pytest.fail("a server was started"))
    with pytest.raises(SystemExit, match="--pin: needs 4 physical cores"):
        neighbours.main(["--pin", "--versus", "released"])
