"""Do idle neighbours change a profile? (issue 11 item 2: a baseline profiled beside idle neighbours
against one profiled alone, within ±3 %)

A scheduled run profiles each server while the others sit up and idle. Comparing one sweep beside them with
a later sweep after stopping them (`load.alone_check`) mixes their effect with the host's drift between
the two sweeps: on these shared hosts two sweeps of one server minutes apart differ by 5-40 %
(docs/results/h200-2026-11-27-11: alone check c16 -28.7 %, while the A/A in the same run was +12.0 %).

Here the two conditions take turns, round by round, on one server: the profiled server and `--neighbours`
idle servers of the same model, each with the memory share of one among 1 + neighbours (the scheduled
run's split). Before each round the neighbours are either left running (idle, as in a scheduled run) or
stopped with SIGSTOP (their whole process groups: no CPU time, no GPU work; their memory stays held, and
the profiled server's own memory is what its start gave it either way). A stopped process is, for the
profiled server's speed, what a terminated one is: it runs nothing on the host's cores or the card; what
it still holds (memory, a CUDA context with nothing queued) takes no time from another context. The
conditions alternate in pairs, their order reversed every other pair (AB BA AB …), each pair on the same
request slice, each round from an empty prefix cache. The host's drift then falls on both conditions
alike; what is left is the noise of single rounds, which many pairs average down.

Per level (the ladder of params.yaml's load.concurrency): per pair, the ratio running / stopped of output
throughput, median TPOT and median TTFT; their geometric mean as a % difference, with its 95 % confidence
interval (Student's t on the log-ratios, scipy.stats), and the same over every level's pairs ("all").
`equivalent`: the two match within ±3 % by two one-sided tests at 5 % (TOST, the 90 % interval inside
±3 %); `within_3pct`: the stricter 95 % interval inside ±3 %.

    python bench/neighbours.py [--neighbours 6] [--seconds 120] [--out F.json]

`--versus gone` asks the next question, now that the scheduler holds the neighbours still during each
profile (`load.hold_neighbours`): is a profile beside held neighbours the same as one with no neighbour at
all (terminated)? A terminated server does not come back between two rounds, so there the conditions come
in blocks (`versus_gone`), and the difference is held / gone.

    python bench/neighbours.py --versus gone [--cycles 2] [--rounds 20] [--levels 1,128] [--out F.json]

In blocks, the pairs of one block are not independent: the host's state in that block (the profiled
server's own CPU time for the same requests differed by 10-20 % between blocks, 2026-11-28, H200) is
shared by all its rounds, so the per-pair interval is too narrow. Four runs of 2 cycles, each "significant"
by its pairs, gave +6.8, +2.3 (H200), +9.4 (H100) and -10.5 % (H200). The unit is the cycle: `by_cycle`
is each cycle's mean held/gone ratio over all its pairs and the interval over cycles (t, n = cycles), and
`--pool` does the same over several runs' JSON files of one `--versus`:

    python bench/neighbours.py --pool A.json B.json … [--out F.json]

`--versus released` keeps the pairs of rounds and still takes the neighbours off the card: between the two
rounds of a pair it checkpoints their CUDA processes through the driver (cuCheckpointProcessLock and
…Checkpoint: their device memory copied to their host memory, their allocations and contexts released) or
restores them, seconds where a restart is a minute. Held against released is held against gone as far
as the card and the host's cores can tell (a stopped process runs nothing either way), with the host's
drift on both conditions alike. For the driver it is not: a locked process's state is still kept. On an
H200 (2026-11-28, docs/results/h200-2026-11-28-4) vLLM's engine cores released and restored 150 times (the
card's used memory 40.6 GB held, 6.3 GB released; 3.6 s a release, 2.0 s a restore). Consecutive pairs
of one level are not independent either (lag-1 correlation up to 0.4), so `--pool` takes a run's level as
the unit. Four runs on two leases pooled that way (docs/results/h200-2026-11-28-5): held / released
output throughput +0.09 %, 95 % interval −2.31, +2.54, inside ±3 %.

    python bench/neighbours.py --versus released [--seconds 120] [--levels 1,16,128] [--out F.json]

`--pin` puts the profiled server's processes (every thread) on two physical cores of their own, this
process (the client) on a third, the neighbours on the others. Why: at c1 a round's throughput follows the
engine core's Python loop (server ITL 1.5-2.4 ms between rounds of one level, 2026-11-28, H200), and the
core speed probe came out either ≈ 0.9 or ≈ 1.5 ms, as if it depended on which core, or which core's SMT
sibling, the thread landed on; rounds with fixed cores might differ less. They did not (H200, 2026-11-28,
docs/results/h200-2026-11-28-5: pair SD 12.8/16.2/13.2 % pinned, 12.0/17.0/9.0 % not, same lease), and
bench/cpu_map.py found every vCPU alike (fastest probe ≈ 1.0 ms, median ≈ 1.7 ms on each): the speed
depends on when, not where.

    python bench/neighbours.py --versus released --pin [--seconds 150] [--out F.json]

Run in the pipeline's working copy on the GPU host once the fixture and workload exist (gpu/session.sh
bench NAME neighbours.py …). Hand-written: no serving benchmark pauses other servers between rounds.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run as a script from the repository root

METRICS = ("output_throughput", "median_tpot_ms", "median_ttft_ms")
# per round, their mean per condition (`level`): what may explain a difference between the conditions
CONTEXT = ("sm_clock_mhz", "cpu_probe_us", "client_cpu_s", "server_cpu_s", "server_itl_ms", "server_ttft_ms",
           "host_cpu_pct", "host_steal_pct")
# per --versus: the two conditions, held first (the pairs' keys; a comparison is the first / the second)
CONDITIONS = {"gone": ("held", "gone"), "released": ("held", "released"), "running": ("running", "stopped")}
SERVER_MEANS = {"server_itl_ms": "vllm:inter_token_latency_seconds", "server_ttft_ms": "vllm:time_to_first_token_seconds"}


def pause(servers, stopped: bool) -> None:
    """SIGSTOP / SIGCONT to each server's process group, as the scheduler holds a profile's neighbours."""
    from evalgate.engines.vllm import hold_process_group

    for s in servers:
        hold_process_group(s.proc, stopped)


def compare(pairs: list[dict], metric: str, margin_pct: float = 3.0, a: str = "running", b: str = "stopped") -> dict:
    """The `a`/`b` (running/stopped) difference over the pairs: geometric mean ratio in %, its 95 % CI (t on the
    log-ratios), `within_3pct` when that CI lies inside ±3 %, and `equivalent` by two one-sided t-tests
    at 5 % each (TOST: the 90 % CI inside ±`margin_pct`), the usual test that two conditions match within
    a margin: a 95 % CI inside the margin asks for 2.5 % on each side, more than "matches" needs."""
    from scipy import stats

    logs = [math.log(p[a][metric] / p[b][metric]) for p in pairs if p[a].get(metric) and p[b].get(metric)]
    if len(logs) < 3:
        return {"n": len(logs)}
    res = stats.ttest_1samp(logs, 0.0)
    lo, hi = res.confidence_interval(0.95)
    lo90, hi90 = res.confidence_interval(0.90)
    pct = lambda x: round(100 * (math.exp(x) - 1), 2)   # noqa: E731
    mean = sum(logs) / len(logs)
    return {"n": len(logs), "diff_pct": pct(mean), "ci95_pct": [pct(lo), pct(hi)], "ci90_pct": [pct(lo90), pct(hi90)],
            "within_3pct": bool(-3 <= pct(lo) and pct(hi) <= 3),
            "equivalent": bool(-margin_pct <= pct(lo90) and pct(hi90) <= margin_pct), "p": round(float(res.pvalue), 3),
            "round_sd_pct": round(100 * float(stats.tstd(logs)), 1)}


def by_cycle(pairs: list[dict], a: str = "held", b: str = "gone") -> dict:
    """Per METRIC: each cycle's geometric mean ratio `a`/`b` over its pairs (every level's), and `compare`
    over those cycle means (n = cycles: a block's rounds share the host's state, so its pairs are one
    observation, not many). Two cycles give no interval (`n` only). A pair's `cycle` is any key: pooled
    paired runs (`pool`) use (run, level), the stretch of minutes one level's pairs take."""
    cycles = list(dict.fromkeys(p["cycle"] for p in pairs))   # in order of appearance (keys may not sort)
    out = {}
    for m in METRICS:
        means = []
        for c in cycles:
            logs = [math.log(p[a][m] / p[b][m]) for p in pairs if p["cycle"] == c and p[a].get(m) and p[b].get(m)]
            if logs:
                means.append(math.exp(statistics.fmean(logs)))
        out[m] = compare([{a: {m: r}, b: {m: 1.0}} for r in means], m, a=a, b=b)
        if "round_sd_pct" in out[m]:
            out[m]["cycle_sd_pct"] = out[m].pop("round_sd_pct")
        out[m]["per_cycle_pct"] = [round(100 * (r - 1), 1) for r in means]
    return out


def pool(files: list[Path]) -> dict:
    """Several runs of one `--versus` together. `--versus gone`: `by_cycle` over every run's cycles (each
    run's kept apart). The paired modes (`released`, `running`): the unit is a run's level, the few minutes
    its pairs take (`by_cycle` keyed by (run, level)): consecutive pairs there are not independent either
    (lag-1 correlation of the pair ratios up to 0.4 within a level, H200 2026-11-28, and one level's
    mean moved from +4.6 to -2.7 % between two runs), so the per-pair interval (`by_pair`, kept for
    reference) is too narrow. `by_run` takes the run as the unit (its pairs' geometric mean), the coarsest
    one: the two leases (two machines) of four runs leaned +2.4 and −2.1 % (H200, 2026-11-28)."""
    pairs, kinds = [], set()
    for i, f in enumerate(files):
        run = json.loads(f.read_text())
        kind = run.get("versus", "running")   # runs before 2026-11-28 wrote it for `gone` only
        if kind not in CONDITIONS:
            raise SystemExit(f"neighbours: {f} is not a bench/neighbours.py run (versus {kind!r})")
        kinds.add(kind)
        for name, lv in run["levels"].items():
            pairs += [dict(p, cycle=(i, p["cycle"] if kind == "gone" else name)) for p in lv.get("pairs", [])]
    if len(kinds) > 1:
        raise SystemExit(f"neighbours: runs of different --versus cannot be pooled: {', '.join(sorted(kinds))}")
    kind = kinds.pop()
    a, b = CONDITIONS[kind]
    out = {"files": [str(f) for f in files], "versus": kind, "by_cycle": by_cycle(pairs, a, b),
           # the coarsest unit: a run (its pairs' geometric mean), for a lease or a machine of its own
           "by_run": by_cycle([dict(p, cycle=p["cycle"][0]) for p in pairs], a, b)}
    if kind != "gone":
        out["by_pair"] = {m: compare(pairs, m, a=a, b=b) for m in METRICS}
    return out


def round_size(load_cfg, c: int) -> int:
    """Requests per round at concurrency `c`: `load.waves` waves, at least `load.requests.min`."""
    return max(int(load_cfg.get("requests", {}).get("min", 16)), int(load_cfg.get("waves", 4)) * c)


def group_cpu_s(server) -> float | None:
    """CPU seconds (user + system) used so far by every process of the server's process group (the API
    server and the engine core: `vllm serve` starts its own session), or None without one."""
    import psutil

    from evalgate.engines.vllm import group_processes

    pgid = getattr(getattr(server, "proc", None), "pid", None)
    if pgid is None:
        return None
    total = 0.0
    for p in group_processes({pgid}):
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def server_sums(ep) -> dict[str, tuple[float, float]] | None:
    """(sum, count) of the server's own latency histograms (SERVER_MEANS) from its Prometheus /metrics
    (parsed by prometheus_client, a vLLM dependency), or None for an endpoint without a URL."""
    base = getattr(ep, "base_url", None)
    if not base:
        return None
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:  # noqa: S310 - loopback only
        text = r.read().decode()
    keys, out = {name: key for key, name in SERVER_MEANS.items()}, {}
    for fam in text_string_to_metric_families(text):
        if key := keys.get(fam.name):
            out[key] = (sum(s.value for s in fam.samples if s.name.endswith("_sum")),
                        sum(s.value for s in fam.samples if s.name.endswith("_count")))
    return out


def one_round(cfg, ep, batch: list, c: int, t0: float, server=None) -> dict:
    """One round from an empty prefix cache: the METRICS of `batch` at concurrency `c`, when it ended, and
    what may explain a difference (CONTEXT): the card's SM clock after it, the host core's speed before it
    (evalgate.profile.cpu_probe_us), the client's CPU time, the profiled server's CPU time and its own
    mean inter-token latency and TTFT (its /metrics: they leave out the client, so a difference only the
    client sees is the client's), and the whole host's busy and stolen CPU share."""
    from evalgate.profile import _host_cpu, _host_share, cpu_probe_us, summarize

    ep.reset_cache()
    probe = cpu_probe_us()
    host0, cpu0, sums0 = _host_cpu(), group_cpu_s(server), server_sums(ep)
    recs, dur, extras = ep.run_requests(batch, concurrency=c, ignore_eos=bool(cfg.workload.get("ignore_eos", False)))
    host1, cpu1, sums1 = _host_cpu(), group_cpu_s(server), server_sums(ep)
    ctx = {"cpu_probe_us": round(probe, 1)} | {k: extras[k] for k in CONTEXT if k in (extras or {})}
    ctx |= {k: round(v, 2) for k, v in _host_share(host0, host1).items()}
    if cpu0 is not None and cpu1 is not None:
        ctx["server_cpu_s"] = round(cpu1 - cpu0, 3)
    for k, (s1, n1) in (sums1 or {}).items():
        s0, n0 = (sums0 or {}).get(k, (0.0, 0.0))
        if n1 > n0:
            ctx[k] = round(1000 * (s1 - s0) / (n1 - n0), 3)
    return {m: summarize(recs, dur, cfg.slo).get(m) for m in METRICS} | {"at_s": round(time.time() - t0, 1)} | ctx


def warm_up(cfg, ep, requests: list, i: int, c: int) -> None:
    """The level's warm-up round (as a profile does), not measured."""
    from evalgate.profile import level_warmup

    ep.reset_cache()
    ep.run_requests(requests[:round_size(cfg.load, c)], concurrency=c, ignore_eos=bool(cfg.workload.get("ignore_eos", False)),
                    warmup=level_warmup(cfg.load, i, c))


def level(c: int, pairs: list[dict], a: str, b: str, extra: dict) -> dict:
    """A level's pairs and their comparison `a` / `b`, said in one line, and the CONTEXT means in another."""
    out = {"pairs": pairs, **extra, "compare": {m: compare(pairs, m, a=a, b=b) for m in METRICS}}
    out["context"] = {k: {cond: round(statistics.fmean(v), 2) for cond in (a, b)
                          if (v := [p[cond][k] for p in pairs if p[cond].get(k) is not None])}
                      for k in CONTEXT}
    print(f"neighbours: c{c:<4d} {len(pairs)} pairs  {a} vs {b}  " + "  ".join(
        f"{m.replace('median_', '')} {r.get('diff_pct', '–'):+} % [{r['ci95_pct'][0]:+}, {r['ci95_pct'][1]:+}]"
        for m, r in out["compare"].items() if "ci95_pct" in r), flush=True)
    print("            " + "  ".join(f"{k} " + " / ".join(f"{cond} {v}" for cond, v in by.items())
                                     for k, by in out["context"].items() if by), flush=True)
    return out


def paired(a, cfg, ep, servers: list, requests: list, ladder: list[int], t0: float, names: tuple[str, str],
           set_second) -> dict:
    """Two conditions of the neighbours in pairs of rounds taking turns (AB BA …), per level until
    `--seconds` have gone (at least 4 pairs); `set_second(True)` puts the neighbours in the second
    condition, `set_second(False)` back in the first (each pair needs one change: AB BA AB …)."""
    first, second = names
    levels = {}
    for i, c in enumerate(ladder):
        size = round_size(cfg.load, c)
        slices = max(1, len(requests) // size)
        warm_up(cfg, ep, requests, i, c)
        pairs, start = [], time.time()
        while time.time() - start < a.seconds or len(pairs) < 4:
            k = len(pairs)
            batch = requests[(k % slices) * size:(k % slices + 1) * size]
            pair = {}
            for in_second in ((False, True) if k % 2 == 0 else (True, False)):
                set_second(in_second)
                time.sleep(a.settle)
                pair[second if in_second else first] = one_round(cfg, ep, batch, c, t0, servers[0])
            pairs.append(pair)
        levels[f"c{c}"] = level(c, pairs, first, second, {"requests_per_round": size})
    return levels


def versus_running(a, cfg, engine, servers: list, ep, requests: list, ladder: list[int], t0: float) -> dict:
    """Held (SIGSTOP) against running idle, in pairs of rounds (`paired`)."""
    others = servers[1:]

    def stopped(yes: bool) -> None:
        pause(others, yes)

    try:
        levels = paired(a, cfg, ep, servers, requests, ladder, t0, CONDITIONS["running"], stopped)
    finally:
        pause(others, False)
    return {"seconds_per_level": a.seconds, "levels": levels}


def cuda_pids(servers: list, driver) -> list[int]:
    """The processes of these servers' process groups that hold a CUDA context (the engine cores; the
    API servers have none): those `cuCheckpointProcessGetState` answers for."""
    from evalgate.engines.vllm import group_processes

    return sorted(p.pid for p in group_processes({s.proc.pid for s in servers})
                  if driver.cuCheckpointProcessGetState(p.pid)[0] == driver.CUresult.CUDA_SUCCESS)


def gpu_release(servers: list, driver, pids: list[int], release: bool) -> float:
    """Release (`release`) or take back the card for the held neighbours, through the CUDA driver's
    process checkpointing: lock and checkpoint copies each process's device memory to its host memory and
    releases its allocations and context, so the card holds nothing of theirs, as if they were gone;
    restore and unlock put it all back. A locked or restoring process must run (its driver thread does the
    work), so the groups are continued for the call and stopped again after it. The processes run nothing
    else meanwhile: they are idle servers whose CUDA calls the lock blocks. Returns the seconds it took.
    Hand-written: no serving benchmark releases idle servers' GPU state between rounds."""
    from concurrent.futures import ThreadPoolExecutor

    t = time.perf_counter()

    def one(pid: int) -> None:
        steps = ((driver.cuCheckpointProcessLock, driver.cuCheckpointProcessCheckpoint) if release else
                 (driver.cuCheckpointProcessRestore, driver.cuCheckpointProcessUnlock))
        for step in steps:
            err = step(pid, None)[0]
            if err != driver.CUresult.CUDA_SUCCESS:
                raise RuntimeError(f"{step.__name__}({pid}): {err}")

    pause(servers, False)
    try:
        with ThreadPoolExecutor(max(1, len(pids))) as pool:
            list(pool.map(one, pids))
    finally:
        pause(servers, True)
    return time.perf_counter() - t


def versus_released(a, cfg, engine, servers: list, ep, requests: list, ladder: list[int], t0: float) -> dict:
    """Held (SIGSTOP, their GPU state on the card) against released (SIGSTOP, their GPU state
    checkpointed to host memory: no context, no allocation on the card), in pairs of rounds (`paired`).
    A released neighbour is, for the card, a terminated one, and a stopped process is nothing on the host's
    cores either way; unlike `--versus gone` the two conditions alternate round by round (a toggle is
    seconds, a restart a minute), so the host's drift falls on both alike. The card's used memory after each
    toggle (`engine.device_memory`, None without NVML) shows that the release took place."""
    from cuda.bindings import driver

    others = servers[1:]
    driver.cuInit(0)   # a restore needs the driver initialised in the calling process (or persistence mode)
    pids = cuda_pids(others, driver)
    if not pids:
        raise SystemExit("neighbours: no neighbour process holds a CUDA context to release")
    toggles, state = [], {"released": False}

    def used_mib() -> float | None:
        free_total = engine.device_memory()
        return round((free_total[1] - free_total[0]) / 2**20) if free_total else None

    def released(yes: bool) -> None:
        if yes != state["released"]:
            seconds = gpu_release(others, driver, pids, yes)
            toggles.append({"release": yes, "seconds": round(seconds, 2), "card_used_mib": used_mib()})
            state["released"] = yes

    pause(others, True)
    try:
        levels = paired(a, cfg, ep, servers, requests, ladder, t0, CONDITIONS["released"], released)
    finally:
        released(False)
        pause(others, False)
    return {"seconds_per_level": a.seconds, "levels": levels, "cuda_pids": pids, "toggles": toggles}


def pin(servers: list, plan: dict[str, list[int]]) -> dict:
    """`--pin`: every thread of the profiled server's process group on `plan["server"]`, of the neighbours'
    on `plan["rest"]`, of this process (the client) on `plan["client"]` (common.pin_plan); what was pinned.
    Hand-written: vLLM binds an engine core to its GPU's NUMA node (--numa-bind), not a server to cores."""
    import os

    from common import pin_threads

    from evalgate.engines.vllm import group_processes

    threads = {"server": pin_threads([p.pid for p in group_processes({servers[0].proc.pid})], plan["server"]),
               "rest": pin_threads([p.pid for p in group_processes({s.proc.pid for s in servers[1:]})], plan["rest"]),
               "client": pin_threads([os.getpid()], plan["client"])}
    print("neighbours: pinned " + ", ".join(f"{k} ({threads[k]} threads) on CPUs {v}" for k, v in plan.items()),
          flush=True)
    return {"cpus": plan, "threads": threads}


def versus_gone(a, cfg, engine, servers: list, ep, requests: list, ladder: list[int], t0: float) -> dict:
    """Held (SIGSTOP, as the scheduler holds a profile's neighbours) against gone (terminated): what holding
    leaves of the neighbours, against a profile with no neighbour at all. A terminated server cannot come
    back between two rounds (a start is a minute), so the conditions come in blocks of `--rounds` rounds per
    level, in cycles held-gone, gone-held, … (the neighbours stopped or started again between blocks, while
    nothing is measured); round i of a level in one block is paired with round i in the other block of its
    cycle, on the same request slice, each from an empty prefix cache, after one warm-up round per level at
    the start of every block. Reversing the order every other cycle puts a steady drift on both alike.
    `servers`: the profiled server first; the neighbours after it are stopped and started in place, so the
    caller's cleanup stops whatever is up."""
    import tempfile

    from common import baseline_share

    from evalgate.schedule import stop_servers

    model, variant = cfg.model, cfg.variant("baseline")
    share = baseline_share(engine, model, variant, 1 + a.neighbours)
    events = []

    def neighbours_gone() -> None:
        if len(servers) == 1:
            return
        t = time.time()
        stop_servers(servers[1:])   # a held group is continued, then ends
        del servers[1:]
        events.append({"what": "neighbours terminated", "at_s": round(t - t0, 1), "seconds": round(time.time() - t, 1)})

    def neighbours_held() -> None:
        t = time.time()
        if len(servers) == 1:
            work = Path(tempfile.mkdtemp(prefix="neighbours-again-"))
            for i in range(a.neighbours):
                (work / f"s{i}").mkdir()
                servers.append(engine.start(model, variant, work / f"s{i}", share))
            for x in servers[1:]:
                x.wait()
                x.sampler.stop()
            events.append({"what": "neighbours started again", "at_s": round(t - t0, 1),
                           "seconds": round(time.time() - t, 1)})
        pause(servers[1:], True)

    sizes = {c: round_size(cfg.load, c) for c in ladder}
    blocks = []   # (cycle, condition, {level: [round metrics]})
    last = time.time()   # the end of the last request sent
    for cycle in range(a.cycles):
        for cond in (("held", "gone") if cycle % 2 == 0 else ("gone", "held")):
            neighbours_held() if cond == "held" else neighbours_gone()
            # the same idle spell before every block: on 2026-11-27 (H100, -17) each held block followed one
            # (the neighbours' start) and each gone block followed rounds, and held came out 6.9 % slower
            time.sleep(max(a.settle, a.idle_s - (time.time() - last)))
            for i, c in enumerate(ladder):   # a warm-up round per level: the server idled while neighbours started
                warm_up(cfg, ep, requests, i, c)
            got = {c: [] for c in ladder}
            for k in range(a.rounds):
                for c in ladder:
                    j = k % max(1, len(requests) // sizes[c])
                    got[c].append(one_round(cfg, ep, requests[j * sizes[c]:(j + 1) * sizes[c]], c, t0, servers[0]))
            last = time.time()
            blocks.append((cycle, cond, got))
            print(f"neighbours: cycle {cycle + 1}/{a.cycles} {cond}: {a.rounds} rounds per level done "
                  f"at +{time.time() - t0:.0f} s", flush=True)
    levels = {}
    for c in ladder:
        pairs = []
        for cycle in range(a.cycles):
            held = next(g[c] for cy, cond, g in blocks if cy == cycle and cond == "held")
            gone = next(g[c] for cy, cond, g in blocks if cy == cycle and cond == "gone")
            pairs += [{"held": h, "gone": g, "cycle": cycle} for h, g in zip(held, gone)]
        levels[f"c{c}"] = level(c, pairs, "held", "gone", {"requests_per_round": sizes[c]})
    return {"cycles": a.cycles, "rounds": a.rounds, "idle_s": a.idle_s, "levels": levels, "events": events}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--neighbours", type=int, default=6, help="idle servers beside the profiled one")
    ap.add_argument("--seconds", type=float, default=120, help="per level: pairs are run until this much time has gone")
    ap.add_argument("--levels", default=None, help="comma-separated concurrencies (default: load.concurrency)")
    ap.add_argument("--settle", type=float, default=0.3, help="seconds after stopping or resuming the neighbours")
    ap.add_argument("--versus", choices=("running", "gone", "released"), default="running",
                    help="what the held (stopped) neighbours are compared with: running idle (pairs of rounds), "
                         "gone, terminated (blocks of rounds, the neighbours started again between them), or "
                         "released, their GPU state checkpointed to host memory (pairs of rounds)")
    ap.add_argument("--cycles", type=int, default=2, help="--versus gone: blocks held-gone, then gone-held, …")
    ap.add_argument("--rounds", type=int, default=20, help="--versus gone: rounds per level in each block")
    ap.add_argument("--idle-s", type=float, default=50.0,
                    help="--versus gone: every block after this long without a request (a restart of the "
                         "neighbours takes ≈ 48 s; without it only the held blocks followed an idle spell)")
    ap.add_argument("--pool", nargs="+", type=Path, metavar="RUN.json",
                    help="no servers: these runs (of one --versus) together, `by_cycle`: the cycles of --versus "
                         "gone runs, each run's levels for the paired modes")
    ap.add_argument("--pin", action="store_true",
                    help="the profiled server on two physical cores of its own, the client on a third, the "
                         "neighbours on the rest")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    if a.pool:
        out = pool(a.pool)
        print(json.dumps(out, indent=1))
        if a.out:
            a.out.write_text(json.dumps(out, indent=1) + "\n")
        return 0

    from common import baseline_servers, physical_cores, pin_plan  # bench/common.py (run as `python bench/X.py`)

    from evalgate.profile import SWEEPING

    plan = pin_plan(physical_cores()) if a.pin else None   # too few cores: said before any server starts
    n = 1 + a.neighbours
    t0 = time.time()
    with baseline_servers(a.params, n, n, "neighbours-") as (cfg, engine, requests, servers, eps):
        up_s = round(time.time() - t0, 1)
        print(f"neighbours: {n} server(s) up in {up_s} s; profiling the first, {a.neighbours} idle beside it", flush=True)
        ladder = [int(c) for c in a.levels.split(",")] if a.levels else [int(c) for c in cfg.load.get("concurrency", [1])]
        pinned = pin(servers, plan) if plan else None
        SWEEPING.set()   # nothing of ours polls the driver while rounds run
        try:
            versus = {"gone": versus_gone, "released": versus_released, "running": versus_running}[a.versus]
            out = versus(a, cfg, engine, servers, eps[0], requests, ladder, t0)
        finally:
            SWEEPING.clear()
            pause(servers[1:], False)   # stopped servers cannot stop themselves on SIGTERM
    levels, (first, second) = out["levels"], CONDITIONS[a.versus]
    every = [p for r in levels.values() for p in r["pairs"]]   # the profile as a whole: every level's pairs
    levels["all"] = {"pairs": [], "compare": {m: compare(every, m, a=first, b=second) for m in METRICS}}
    if a.versus == "gone":
        levels["all"]["by_cycle"] = by_cycle(every, first, second)
    out = {"neighbours": a.neighbours, "servers_up_s": up_s, "versus": a.versus, "pinned": pinned, **out,
           "seconds": round(time.time() - t0, 1)}
    print(json.dumps({lv: r["compare"] for lv, r in levels.items()}, indent=1))
    if a.out:
        a.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
