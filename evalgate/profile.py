"""Load profile of a served variant: a sweep of load levels over the workload, the same requests for
every variant; per level TTFT, TPOT, ITL, E2EL percentiles, throughput and goodput under the SLO.

Levels (`conf/load/`): a concurrency ladder (closed loop: c requests in flight), climbed until the
output throughput grows by less than `saturation_gain_pct` (saturation), then Poisson request rates
(open loop; `burstiness` as in `vllm bench serve`) at fractions of the *baseline's* peak request
throughput, so every variant meets the same arrival rates. The engine sends the requests (its
`Endpoint.run_requests`: `vllm bench serve`'s own benchmark loop on vLLM, static batches on `hf`) and
returns one record per request; everything below is computed here from those records, once, for
every engine:

- a request's output is what it really produced (EOS and stop sequences respected; `max_tokens` is a
  cap), so speed is also given per output token (`e2el_per_token`: E2E latency / tokens) and the
  output-length distribution is kept for the report (a variant must not win by answering short);
- goodput = requests per second that meet every bound of `gate.slo` (vLLM's `--goodput` rule: TTFT,
  TPOT with TPOT = 0 for one-token outputs, E2EL);
- each level is adaptive: it runs in rounds of requests until the headline metric's 95 % interval is
  within ±`target_ci_pct` (output throughput from the batch means of the steady window), with
  `requests.min` as the floor and `requests.max`/`duration_s.max` as the cap. Hand-written because
  neither `vllm bench serve` nor GuideLLM stops on a precision target.
"""
from __future__ import annotations

import math
import statistics
import threading
import time

import numpy as np

from evalgate.metrics import stat_keys

# Set while a load sweep runs in this process: the samplers that poll the GPU driver (the servers'
# memory samplers, evalgate.engines.vllm; the scheduler's utilization sampler) wait meanwhile, so a
# profile shares the driver with nothing of ours but its client (bench/aa_noise.py measures the effect)
SWEEPING = threading.Event()

T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23}
BINS = 8


def t95(df: int) -> float:
    """Two-sided 95 % Student t quantile (scipy's, tabulated for small df so this module stays light)."""
    if df in T95:
        return T95[df]
    from scipy import stats

    return float(stats.t.ppf(0.975, df))


def token_times(r: dict) -> list[float]:
    """Arrival times of a request's output chunks, in seconds after its level started."""
    out, t = [r["start"] + r["ttft"]], r["start"] + r["ttft"]
    for gap in r["itl"]:
        t += gap
        out.append(t)
    return out


def tpot(r: dict) -> float:
    """(E2EL − TTFT)/(tokens − 1); 0 for a one-token output (vLLM's convention, also for goodput)."""
    n = r["output_tokens"]
    return (r["e2el"] - r["ttft"]) / (n - 1) if n > 1 else 0.0


def is_good(r: dict, slo: dict) -> bool:
    """A request meets the SLO when it meets every bound given (ms): ttft_ms, tpot_ms, e2el_ms."""
    return (r["ttft"] * 1000 <= slo.get("ttft_ms", math.inf) and tpot(r) * 1000 <= slo.get("tpot_ms", math.inf)
            and r["e2el"] * 1000 <= slo.get("e2el_ms", math.inf))


def goodput(records: list[dict], slo: dict, duration_s: float) -> float | None:
    """Requests per second meeting the SLO; None without an SLO."""
    if not slo:
        return None
    return sum(is_good(r, slo) for r in records if r.get("ok", True)) / duration_s


def steady_bins(records: list[dict], concurrency: int | None, bins: int = BINS) -> list[float]:
    """Output tokens per second in `bins` equal slices of the steady part of one round: from the moment
    the first `concurrency` requests are all streaming to the moment the last request was sent (later,
    the load drains); the middle 80 % of token arrivals when that window is too short."""
    ok = [r for r in records if r.get("ok", True) and r["output_tokens"]]
    if len(ok) < 2:
        return []
    arrivals, weights = [], []
    for r in ok:
        ts = token_times(r)
        arrivals += ts
        weights += [r["output_tokens"] / len(ts)] * len(ts)   # a chunk may carry several speculated tokens
    arrivals, weights = np.asarray(arrivals), np.asarray(weights)
    starts = sorted(r["start"] for r in ok)
    firsts = sorted(r["start"] + r["ttft"] for r in ok)
    lo = firsts[min(len(firsts), concurrency or 1) - 1]
    hi = starts[-1]
    if hi - lo < 0.5 * (arrivals.max() - arrivals.min()):
        lo, hi = np.quantile(arrivals, [0.1, 0.9])
    if hi <= lo:
        return []
    edges = np.linspace(lo, hi, bins + 1)
    tokens, _ = np.histogram(arrivals, edges, weights=weights)
    return list(tokens / np.diff(edges))


def ci_pct(values: list[float]) -> float:
    """Half-width of the 95 % t-interval of the mean, in % of the mean (inf with < 2 values)."""
    if len(values) < 2 or not statistics.fmean(values):
        return math.inf
    return 100 * t95(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values)) / abs(statistics.fmean(values))


def summarize(records: list[dict], duration_s: float, slo: dict) -> dict:
    """One level's metrics in vLLM's names, from its request records."""
    ok = [r for r in records if r.get("ok", True)]
    out_tokens = [r["output_tokens"] for r in ok]
    s: dict[str, float] = {"completed": len(ok), "failed": len(records) - len(ok), "duration": duration_s,
                           "request_throughput": len(ok) / duration_s,
                           "output_throughput": sum(out_tokens) / duration_s,
                           "total_token_throughput": sum(out_tokens + [r["prompt_tokens"] for r in ok]) / duration_s}
    if not ok:
        return s
    s.update(stat_keys("ttft", [1000 * r["ttft"] for r in ok]))
    s.update(stat_keys("tpot", [1000 * tpot(r) for r in ok if r["output_tokens"] > 1]))
    s.update(stat_keys("itl", [1000 * g for r in ok for g in r["itl"]]))
    s.update(stat_keys("e2el", [1000 * r["e2el"] for r in ok]))
    s.update(stat_keys("e2el_per_token", [1000 * r["e2el"] / r["output_tokens"] for r in ok if r["output_tokens"]]))
    s["mean_output_tokens"] = statistics.fmean(out_tokens)
    s["median_output_tokens"] = float(np.median(out_tokens))
    s["stopped_before_cap"] = sum(not r.get("capped", False) for r in ok) / len(ok)
    g = goodput(records, slo, duration_s)
    if g is not None:
        s["request_goodput"] = g
    return s


def headline_ci(rounds: list[list[dict]], concurrency: int | None) -> float:
    """Precision of a level: output throughput from the batch means of every round's steady window (at
    concurrency 1 too: per-request latencies of a mixed workload vary by kind, the token rate does not)."""
    return ci_pct([b for rnd in rounds for b in steady_bins(rnd, concurrency)])


def run_level(ep, requests: list[dict], load: dict, slo: dict, ignore_eos: bool, *, concurrency: int | None = None,
              rate: float | None = None, name: str | None = None, warmup: int = 0, keep_text: bool = False,
              probe=None) -> dict:
    """One load level, adaptive: rounds of requests (consecutive slices of the workload, so no prompt
    repeats inside a level) until the headline interval is within ±target_ci_pct or a cap is hit."""
    req = load.get("requests", {})
    lo, hi = int(req.get("min", 16)), min(int(req.get("max", 256)), len(requests))
    dur = load.get("duration_s", {})
    min_s, max_s = float(dur.get("min", 0)), float(dur.get("max", 60))
    target = float(load.get("target_ci_pct", 2.0))
    if concurrency:
        n = max(lo, int(load.get("waves", 4)) * concurrency)
    else:
        n = max(lo, math.ceil(rate * max(min_s, 1.0)))
    n = min(n, hi)
    records, rounds, spent, extras, sent = [], [], 0.0, [], 0
    ep.reset_cache()   # every level from an empty prefix cache: the same start for both A/A sweeps
    probe = probe or cpu_probe_us
    probe0, host0 = probe(), _host_cpu()
    while True:
        batch = requests[sent:sent + n]
        recs, duration, extra = ep.run_requests(batch, concurrency=concurrency, rate=rate,
                                                burstiness=float(load.get("burstiness", 1.0)),
                                                ignore_eos=ignore_eos, warmup=warmup if not sent else 0)
        warmup = 0
        for r in recs:
            r["round"] = len(rounds)
            if not keep_text:
                r.pop("text", None)
        rounds.append(recs)
        records += recs
        spent += duration
        sent += len(batch)
        extras.append(extra)
        precision = headline_ci(rounds, concurrency)
        if (precision <= target and spent >= min_s) or sent >= hi or spent >= max_s:
            break
        n = min(max(lo, n), hi - sent)
    s = summarize(records, spent, slo)
    s["ci_pct"] = precision
    s["rounds"] = len(rounds)
    s.update(_merge_extras(extras))
    cpu = [e["client_cpu_s"] for e in extras if "client_cpu_s" in e]
    if cpu and spent:   # the load generator's own CPU share: near 100 % it, not the server, sets the pace
        s["client_cpu_pct"] = 100 * sum(cpu) / spent
    s.update(_host_share(host0, _host_cpu()))
    s["cpu_probe_us"] = min(probe0, probe())
    return {"name": name or (f"c{concurrency}" if concurrency else f"rate{rate:g}"), "concurrency": concurrency,
            "rate": rate, "summary": s, "requests": records}


def cpu_probe_us(repeats: int = 5) -> float:
    """How fast one of this host's cores runs Python now: the fastest of `repeats` timings of a fixed
    loop (≈ 1 ms each), in µs, taken before and after each level. A small model on vLLM is CPU-bound (the
    engine's Python loop sets the token rate at c1), so when two sweeps of one server differ, this says
    whether the host's cores ran slower (their clock, caches and memory shared with other tenants) or the
    engine did. The fastest timing leaves out preemption: time other processes take shows in
    `host_cpu_pct` and `host_steal_pct` instead.
    Hand-written: no benchmark tool records the host's speed beside its load levels."""
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        x = 0
        for i in range(20_000):
            x += i * i
        best = min(best, time.perf_counter() - t0)
    return 1e6 * best


def _host_cpu():
    import psutil

    return psutil.cpu_times()


def _host_share(a, b) -> dict:
    """The whole machine's CPU over a level, as a share of all its cores: busy (the servers, the client and
    anything else) and stolen by the hypervisor (`steal`, Linux). Small models on vLLM are CPU-bound
    (≈ 2 ms a token at c1), so an A/A difference with high steal is the host's, not the engine's."""
    total = sum(b) - sum(a)
    if total <= 0:
        return {}
    idle = (b.idle - a.idle) + (getattr(b, "iowait", 0) - getattr(a, "iowait", 0))
    out = {"host_cpu_pct": 100 * (total - idle) / total}
    if hasattr(b, "steal"):
        out["host_steal_pct"] = 100 * (b.steal - a.steal) / total
    return out


def _merge_extras(extras: list[dict]) -> dict:
    """Engine counters summed over a level's rounds → speculative acceptance rate and mean accepted
    length (vLLM: drafts, draft tokens and accepted tokens from its metrics; hf: tokens per target step),
    and the card's mean SM clock where the engine reads one."""
    total = {k: sum(e.get(k, 0) for e in extras) for k in (
        "spec_decode_num_drafts", "spec_decode_draft_tokens", "spec_decode_accepted_tokens",
        "spec_decode_new_tokens", "spec_decode_target_steps")}
    out = {}
    clocks = [e["sm_clock_mhz"] for e in extras if "sm_clock_mhz" in e]
    if clocks:   # the card's SM clock after each round (vLLM): a slower A/A sweep on a lower clock is the card's
        out["sm_clock_mhz"] = statistics.fmean(clocks)
    if total["spec_decode_draft_tokens"]:
        out["spec_decode_acceptance_rate"] = 100 * total["spec_decode_accepted_tokens"] / total["spec_decode_draft_tokens"]
    if total["spec_decode_num_drafts"]:
        out["spec_decode_acceptance_length"] = 1 + total["spec_decode_accepted_tokens"] / total["spec_decode_num_drafts"]
    elif total["spec_decode_target_steps"]:
        out["spec_decode_acceptance_length"] = total["spec_decode_new_tokens"] / total["spec_decode_target_steps"]
    return out


def level_warmup(load: dict, i: int, concurrency: int) -> int:
    """Unmeasured requests before a concurrency level (`vllm bench serve --num-warmups`, which sends them at
    the level's concurrency): `warmup` before the first level; with `warmup_each_level`, at least one full
    wave before every level. Why: on an H100 (2026-11-26, four runs) the baseline's first c128 level was
    15-39 % slower than its A/A repeat, its median TTFT 272-293 ms against 185-226 ms, with no CPU steal:
    the first time a server meets that concurrency costs, and a warm-up wave moves that out of the level."""
    n = int(load.get("warmup", 0))
    if load.get("warmup_each_level"):
        return max(n, concurrency)
    return n if i == 0 else 0


def sweep(ep, requests: list[dict], load: dict, slo: dict, ignore_eos: bool, base_peak_rps: float | None = None,
          progress=None) -> dict:
    """The whole sweep: the concurrency ladder to saturation, then the rate levels (engines that can).
    `base_peak_rps`: the baseline's peak request throughput, which the rate fractions scale (None: this
    is the baseline, its own peak is used)."""
    SWEEPING.set()
    try:
        return _sweep(ep, requests, load, slo, ignore_eos, base_peak_rps, progress)
    finally:
        SWEEPING.clear()


def _sweep(ep, requests: list[dict], load: dict, slo: dict, ignore_eos: bool, base_peak_rps: float | None,
           progress) -> dict:
    levels, best = [], 0.0
    gain = float(load.get("saturation_gain_pct", 5.0))
    t0 = time.perf_counter()
    ladder = list(load.get("concurrency", [1]))
    for i, c in enumerate(ladder):
        lvl = run_level(ep, requests, load, slo, ignore_eos, concurrency=c, warmup=level_warmup(load, i, c),
                        keep_text=(c == 1))
        levels.append(lvl)
        if progress:
            progress(lvl)
        thr = lvl["summary"]["output_throughput"]
        if i and thr < best * (1 + gain / 100):
            lvl["summary"]["saturated"] = 1.0   # throughput stopped growing: no higher level is run
            break
        best = max(best, thr)
    rates = list(load.get("rates", []))
    if rates and getattr(ep, "supports_rate", False):
        peak = base_peak_rps or max(lv["summary"]["request_throughput"] for lv in levels)
        for f in rates:   # named by the fraction: the same name means the same arrival rate in every variant
            lvl = run_level(ep, requests, load, slo, ignore_eos, rate=f * peak, name=f"r{f:g}x")
            levels.append(lvl)
            if progress:
                progress(lvl)
    return {"levels": levels, "summary": headline(levels), "seconds": time.perf_counter() - t0}


LATENCY_KEYS = ("ttft", "tpot", "itl", "e2el", "e2el_per_token")


def headline(levels: list[dict]) -> dict:
    """Flat metrics: every level as `<level>/<metric>`, plus the headline ones unprefixed — latency at
    the lowest concurrency (1 by default), peak output and request throughput over the ladder, the best
    goodput over all levels, output lengths and speculative acceptance at concurrency 1."""
    flat: dict[str, float] = {}
    for lv in levels:
        flat.update({f"{lv['name']}/{k}": v for k, v in lv["summary"].items() if isinstance(v, (int, float))})
    ladder = [lv for lv in levels if lv["concurrency"]]
    if not ladder:
        return flat
    first = ladder[0]["summary"]
    flat.update({k: v for k, v in first.items() if any(k.endswith(f"_{m}_ms") for m in LATENCY_KEYS)})
    for k in ("mean_output_tokens", "median_output_tokens", "stopped_before_cap", "spec_decode_acceptance_rate",
              "spec_decode_acceptance_length"):
        if k in first:
            flat[k] = first[k]
    peak = max(ladder, key=lambda lv: lv["summary"]["output_throughput"])
    flat["output_throughput"] = peak["summary"]["output_throughput"]
    flat["request_throughput"] = max(lv["summary"]["request_throughput"] for lv in ladder)
    flat["peak_concurrency"] = float(peak["concurrency"])
    goods = [lv["summary"]["request_goodput"] for lv in levels if "request_goodput" in lv["summary"]]
    if goods:
        flat["request_goodput"] = max(goods)
    return flat
