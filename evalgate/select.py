"""Which accepted variant is best at each load level, and when a difference is only noise.

A user serving at concurrency 1 cares about latency, one running a batch job about peak throughput, a
team with an SLO about goodput; one "best" for all of them misleads. So the selection is per level:

  latency     the first ladder level (concurrency 1): median E2E latency per output token (lower wins)
  throughput  peak output throughput over the concurrency ladder
  goodput     the best request goodput under `gate.slo` over all levels (with an SLO only)
  <level>     every measured level by itself: output throughput on the ladder, goodput (or latency per
              output token) at the request-rate levels

A variant wins a category only by more than the run's own noise: the larger of the baseline's A/A
difference on that metric (`aa/<metric>`, the same model profiled twice in the run) and the 95 %
intervals of the two values. Otherwise the report says "no difference" and names every variant
within the noise of the top one.
"""
from __future__ import annotations

from evalgate.config import BASELINE


def lower_is_better(metric: str) -> bool:
    """Latencies (`*_ms`) and memory are better low; throughputs, goodput and the rest high."""
    return metric.endswith("_ms") or metric.endswith("_mb")


def _rank(values: dict[str, float], metric: str, noise_pct: dict[str, float]) -> dict:
    """Order `values` (variant → value); the winner only if it beats the runner-up beyond the noise."""
    low = lower_is_better(metric)
    order = sorted(values, key=lambda n: values[n], reverse=not low)
    top = order[0]
    tied = [top, *_inside_noise(values, top, noise_pct, order[1:])]
    return {"metric": metric, "best": top if len(tied) == 1 else None, "no_difference": tied if len(tied) > 1 else [],
            "ranking": order, "values": values, "noise_pct": {n: noise_pct.get(n, 0.0) for n in order}}


def _inside_noise(values: dict[str, float], top: str, noise_pct: dict[str, float], names: list[str]) -> list[str]:
    """Those of `names` whose gap to `top` is no more than the larger noise of the two."""
    def gap(n: str) -> float:
        return 100 * abs(values[n] - values[top]) / abs(values[top]) if values[top] else 0.0

    return [n for n in names if gap(n) <= max(noise_pct.get(top, 0.0), noise_pct.get(n, 0.0))]


def _aa(results: dict[str, dict]) -> dict[str, float]:
    """The run's A/A floor per metric (`aa/<metric>`, from the baseline's two sweeps)."""
    return {k: v for k, v in results.get(BASELINE, {}).get("metrics", {}).items() if k.startswith("aa/")}


def _noise(m: dict, metric: str, aa: dict) -> float:
    """A variant's noise on one metric (%): the run's A/A floor on it and the 95 % interval of the level
    it was measured at, the larger. An unprefixed headline metric takes its level's interval where it
    is known (peak throughput: the peak level)."""
    floor = aa.get(f"aa/{metric}", 0.0) or 0.0
    if "/" in metric:
        level = metric.split("/")[0]
    elif metric == "output_throughput" and "peak_concurrency" in m:
        level = f"c{int(m['peak_concurrency'])}"
    else:
        level = None
    ci = m.get(f"{level}/ci_pct") if level else None
    return max(floor, ci if isinstance(ci, (int, float)) and ci != float("inf") else 0.0)


def per_level(results: dict[str, dict], verdicts: dict[str, dict]) -> dict[str, dict]:
    """{category or level: ranking} over the accepted variants that were profiled."""
    ok = {n: r["metrics"] for n, r in results.items()
          if verdicts.get(n, {}).get("verdict") == "accept" and "output_throughput" in r.get("metrics", {})}
    if not ok:
        return {}
    aa = _aa(results)
    out = {}
    first = next(iter(ok.values()))
    ladder = sorted({k.split("/")[0] for m in ok.values() for k in m if k.startswith("c") and "/" in k
                     and k.split("/")[0][1:].isdigit()}, key=lambda s: int(s[1:]))
    rates = sorted({k.split("/")[0] for m in ok.values() for k in m if k.startswith("r") and k.split("/")[0].endswith("x")})
    wanted = [("latency", f"{ladder[0]}/median_e2el_per_token_ms" if ladder else "median_e2el_per_token_ms"),
              ("throughput", "output_throughput")]
    if any("request_goodput" in m for m in ok.values()):
        wanted.append(("goodput", "request_goodput"))
    wanted += [(lv, f"{lv}/output_throughput") for lv in ladder]
    goodput_known = any(k.endswith("/request_goodput") for k in first)
    wanted += [(lv, f"{lv}/request_goodput" if goodput_known else f"{lv}/median_e2el_per_token_ms") for lv in rates]
    for name, metric in wanted:
        values = {n: m[metric] for n, m in ok.items() if isinstance(m.get(metric), (int, float))}
        if values:
            noise = {n: _noise(ok[n], metric, aa) for n in values}
            out[name] = _rank(values, metric, noise)
    return out


def speculation(results: dict[str, dict], spec_variants: list[str]) -> dict[str, dict]:
    """For each speculative variant: its throughput against the baseline's at every ladder level, and
    the first level where it no longer pays (not faster than the baseline beyond the noise)."""
    base = results.get(BASELINE, {}).get("metrics", {})
    out = {}
    for n in spec_variants:
        m = results.get(n, {}).get("metrics", {})
        levels = sorted({k.split("/")[0] for k in m if k.endswith("/output_throughput") and k.startswith("c")},
                        key=lambda s: int(s[1:]))
        rows, stops = {}, None
        for lv in levels:
            v, b = m.get(f"{lv}/output_throughput"), base.get(f"{lv}/output_throughput")
            if not v or not b:
                continue
            gain = 100 * (v / b - 1)
            noise = max(_noise(m, f"{lv}/output_throughput", {}), _noise(base, f"{lv}/output_throughput", {}))
            rows[lv] = {"speedup_pct": gain, "noise_pct": noise,
                        "acceptance_rate": m.get(f"{lv}/spec_decode_acceptance_rate"),
                        "acceptance_length": m.get(f"{lv}/spec_decode_acceptance_length")}
            if stops is None and gain <= noise:
                stops = lv
        out[n] = {"levels": rows, "stops_paying_at": stops, "identical_output_share": m.get("identical_output_share")}
    return out


def best_overall(results: dict[str, dict], verdicts: dict[str, dict], rank_by: str = "output_throughput") -> str | None:
    """The accepted variant best on `rank_by` (`report.rank_by`, default peak output throughput); the
    metric's name gives the direction (`lower_is_better`)."""
    ok = [(results[n]["metrics"].get(rank_by), n) for n, v in verdicts.items()
          if v["verdict"] == "accept" and results[n]["metrics"].get(rank_by) is not None]
    if not ok:
        return None
    return (min(ok) if lower_is_better(rank_by) else max(ok))[1]


def within_noise_of_best(results: dict[str, dict], verdicts: dict[str, dict], best: str | None,
                         rank_by: str = "output_throughput") -> list[str]:
    """The other accepted variants that `best` does not beat beyond the run's noise on `rank_by` (the
    rule of the per-level tables): the headline names them, and a CI gate's `no_winner` fails when the
    baseline is one of them."""
    if best is None:
        return []
    ok = {n: results[n]["metrics"] for n, v in verdicts.items()
          if v["verdict"] == "accept" and isinstance(results[n]["metrics"].get(rank_by), (int, float))}
    aa = _aa(results)
    values = {n: m[rank_by] for n, m in ok.items()}
    noise = {n: _noise(m, rank_by, aa) for n, m in ok.items()}
    return _inside_noise(values, best, noise, [n for n in values if n != best])
