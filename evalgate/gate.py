"""The gate: every variant against the baseline, a verdict with its reason.

A threshold bounds the *loss* of a quality metric, direction-aware (lm-eval's `higher_is_better`):
loss = baseline − variant when higher is better, variant − baseline otherwise. `max_loss_abs` is in
the metric's own unit (0.02 = 2 points of accuracy), `max_loss_rel_pct` in % of the baseline value;
the tighter of the two is the margin δ. With per-sample logs on both sides (the default) the gate runs
a paired non-inferiority test (evalgate.stats) against δ; without them it compares point estimates.
SLOs bound serving metrics. A variant that failed to run is rejected with its error.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from evalgate import stats
from evalgate.config import BASELINE, Config
from evalgate.fidelity import HIGHER_IS_BETTER, fidelity_metrics
from evalgate.metrics import gate_metric_key
from evalgate.results import load_result, load_samples, sample_values  # noqa: F401 - the gate's readers

# lm-eval aggregations over per-sample (loglikelihood, weight) pairs, as functions of stacked columns
AGGREGATES = {
    "word_perplexity": lambda x, axis: np.exp(-x[0].sum(axis=axis) / x[1].sum(axis=axis)),
    "byte_perplexity": lambda x, axis: np.exp(-x[0].sum(axis=axis) / x[1].sum(axis=axis)),
    "bits_per_byte": lambda x, axis: -x[0].sum(axis=axis) / x[1].sum(axis=axis) / math.log(2),
}


def pair(b: dict, v: dict):
    """Both sides' values on the docs both answered, in doc order (None when there are none)."""
    ids = sorted(set(b) & set(v))
    if not ids:
        return None
    return np.array([b[i] for i in ids], float), np.array([v[i] for i in ids], float)


def paired_samples(base_dir: Path, var_dir: Path, key: str):
    """Per-sample values of `lmeval/<task>/<metric>/<filter>` for both sides, paired by doc_id."""
    _, task, metric, flt = key.split("/")
    b, v = load_samples(base_dir, task), load_samples(var_dir, task)
    p = pair(sample_values(b, metric, flt), sample_values(v, metric, flt)) if b and v else None
    return None if p is None else (*p, metric)


def paired_test(b: np.ndarray, v: np.ndarray, metric: str, delta: float, up: bool, alpha: float,
                power: float = 0.8, seed: int = 0):
    """The non-inferiority test on paired per-sample values (None for an aggregate it cannot recompute)."""
    if b.ndim == 2:
        kind, fn = "aggregate", AGGREGATES.get(metric)
        if fn is None:
            return None
    else:
        kind, fn = ("binary" if set(np.unique(np.r_[b, v])) <= {0.0, 1.0} else "mean"), None
    return stats.noninferiority(b, v, delta, higher_is_better=up, kind=kind, statistic=fn, alpha=alpha,
                                power=power, seed=seed)


def higher_is_better(key: str, hib: dict) -> bool:
    """Direction of a gated metric: fidelity metrics by name, lm-eval metrics by their task's higher_is_better."""
    if key.startswith("fidelity/"):
        return HIGHER_IS_BETTER.get(key.rsplit("/", 1)[-1], False)
    # hib keys lack the filter part: lmeval/task/metric
    return hib.get("/".join(key.split("/")[:3]), True)


def add_fidelity(results: dict[str, dict], baseline: str) -> None:
    """Put each variant's `fidelity/*` metrics (against the baseline) into its metrics, in place."""
    base = results.get(baseline)
    if not base or not base["status"].get("ok"):
        return
    for r in results.values():   # the run computes them (runner.quality); older results get them here
        if r["status"].get("ok") and "dir" in r and not any(k.startswith("fidelity/") for k in r["metrics"]):
            r["metrics"].update(fidelity_metrics(base["dir"], r["dir"]))


def margin(th, baseline_value: float) -> float:
    """δ: the tighter of the absolute and the relative limit."""
    limits = [x for x in (th.max_loss_abs, th.max_loss_rel_pct and th.max_loss_rel_pct / 100 * abs(baseline_value))
              if x is not None]
    return min(limits)


def paired_check(cfg: Config, key: str, delta: float, base: dict, var: dict, up: bool) -> dict | None:
    """The non-inferiority test of one metric, or None without per-sample logs on both sides."""
    st = cfg.gate.get("statistics", {})
    if not key.startswith("lmeval/") or not st.get("enabled", True) or "dir" not in base or "dir" not in var:
        return None  # fidelity metrics are already comparisons with the baseline: point estimates
    pair = paired_samples(base["dir"], var["dir"], key)
    if pair is None:
        return None
    t = paired_test(*pair, delta, up, st.get("alpha", 0.05), st.get("power", 0.8), cfg.seed)
    if t is None:
        return None
    on_inc = st.get("on_inconclusive", "reject")
    passed = t.verdict == "non-inferior" or (t.verdict == "inconclusive" and on_inc == "accept")
    return {"passed": passed, "loss": t.loss, "test": t.as_dict(), "reason": t.line(key)}


def check_quality(cfg: Config, base: dict, var: dict) -> list[dict]:
    checks = []
    for th in cfg.thresholds:
        key = gate_metric_key(th.metric)
        b, v = base["metrics"].get(key), var["metrics"].get(key)
        row = {"metric": key, "baseline": b, "value": v, "max_loss_abs": th.max_loss_abs,
               "max_loss_rel_pct": th.max_loss_rel_pct}
        if b is None or v is None:
            row.update(passed=False, reason=f"{key} missing from {'baseline' if b is None else 'variant'} results")
            checks.append(row)
            continue
        up = higher_is_better(key, base["higher_is_better"])
        row["margin"] = delta = margin(th, b)
        paired = paired_check(cfg, key, delta, base, var, up)
        if paired is not None:
            row.update(paired, loss_rel_pct=100 * paired["loss"] / abs(b) if b else None)
            checks.append(row)
            continue
        row.update(point_check(th, key, b, v, up))
        checks.append(row)
    return checks


def point_check(th, key: str, b: float, v: float, up: bool) -> dict:
    """A threshold on point estimates (fidelity metrics, or lm-eval metrics without per-sample logs)."""
    loss = (b - v) if up else (v - b)
    rel = 100 * loss / abs(b) if b else (0.0 if loss <= 0 else float("inf"))
    fails = []
    if th.max_loss_abs is not None and loss > th.max_loss_abs:
        fails.append(f"loss {loss:.4g} > {th.max_loss_abs:g}")
    if th.max_loss_rel_pct is not None and rel > th.max_loss_rel_pct:
        fails.append(f"loss {rel:.3g}% > {th.max_loss_rel_pct:g}%")
    return {"metric": key, "baseline": b, "value": v, "loss": loss, "loss_rel_pct": rel, "passed": not fails,
            "reason": f"{key}: {b:.4g} → {v:.4g} ({'; '.join(fails) or 'within limits'})"}


def check_limits(cfg: Config, var: dict) -> list[dict]:
    """`gate.limits`: bounds on the variant's own profile metrics (e.g. p99_ttft_ms: {max: 200})."""
    checks = []
    for metric, lim in cfg.limits.items():
        v = var["metrics"].get(metric)
        bad = v is None or ("max" in lim and v > lim["max"]) or ("min" in lim and v < lim["min"])
        bound = " and ".join(f"{k} {x:g}" for k, x in lim.items())
        checks.append({"metric": metric, "value": v, **lim, "passed": not bad,
                       "reason": f"{metric} = {v if v is None else f'{v:.4g}'} (limit {bound})"})
    return checks


def check_output_length(cfg: Config, var: dict) -> list[dict]:
    """`gate.output_length`: the variant's total output tokens over the baseline's on the same greedy
    requests (the profile's first level) within [min_ratio, max_ratio]: speed must not come from
    answering short (or padding long). MLPerf's rule is 0.9–1.1."""
    lim = cfg.gate.get("output_length") or {}
    ratio = var["metrics"].get("output_length_ratio")
    if not lim or ratio is None:
        return []
    lo, hi = lim.get("min_ratio", 0.0), lim.get("max_ratio", math.inf)
    return [{"metric": "output_length_ratio", "value": ratio, "min_ratio": lo, "max_ratio": hi,
             "passed": lo <= ratio <= hi,
             "reason": f"output length {ratio:.3f}× the baseline's on the same prompts (allowed {lo:g}–{hi:g}×)"}]


def decide(cfg: Config, results: dict[str, dict]) -> dict:
    """Verdicts for every variant in `cfg.variants` (one that has no results is rejected too)."""
    base_name = BASELINE
    base = results.get(base_name) or {"status": {"ok": False, "error": "no results"}}
    out = {}
    for name in cfg.variants:
        var = results.get(name) or {"status": {"ok": False, "error": "no results: the variant did not run"}}
        if not var["status"].get("ok"):
            out[name] = {"verdict": "reject", "reason": f"failed to run: {var['status'].get('error')}", "checks": []}
            continue
        if not base["status"].get("ok"):
            out[name] = {"verdict": "reject", "reason": f"baseline {base_name!r} failed: {base['status'].get('error')}",
                         "checks": []}
            continue
        early = var["status"].get("early_rejection")
        if early:  # run@<name> stopped evaluating: one gated metric was already clearly inferior
            out[name] = {"verdict": "reject", "reason": early["reason"], "checks": [early["check"]],
                         "early_rejection": {k: v for k, v in early.items() if k != "check"}}
            continue
        checks = ([] if name == base_name else check_quality(cfg, base, var) + check_output_length(cfg, var)) \
            + check_limits(cfg, var)
        failed = [c["reason"] for c in checks if not c["passed"]]
        verdict = "accept" if not failed else "reject"
        reason = "; ".join(failed) if failed else ("reference" if name == base_name else "all checks passed")
        out[name] = {"verdict": verdict, "reason": reason, "checks": checks}
    from evalgate import select

    spec = [n for n in cfg.variants if cfg.variants[n].speculative["method"] != "none"
            and "output_throughput" in results.get(n, {}).get("metrics", {})]
    return {"baseline": base_name, "variants": out, "best": best_variant(cfg, results, out),
            "best_per_level": select.per_level(results, out), "speculation": select.speculation(results, spec),
            "noise_floor_pct": {k.removeprefix("aa/"): v for k, v in base.get("metrics", {}).items()
                                if k.startswith("aa/") and "/" not in k.removeprefix("aa/")},
            "statistics": cfg.gate.get("statistics", {})}


def best_variant(cfg: Config, results: dict, verdicts: dict) -> str | None:
    """The accepted variant best on `report.rank_by` (default: peak output throughput); the metric's
    name gives the direction (latencies lower, throughputs higher: evalgate.select.lower_is_better)."""
    from evalgate.select import lower_is_better

    key = cfg.report.get("rank_by", "output_throughput")
    lower = lower_is_better(key)
    ok = [(results[n]["metrics"].get(key), n) for n, v in verdicts.items()
          if v["verdict"] == "accept" and results[n]["metrics"].get(key) is not None]
    if not ok:
        return None
    return (min(ok) if lower else max(ok))[1]
