"""The gate: every variant against the baseline, a verdict with its reason.

A threshold bounds the *loss* of a quality metric, direction-aware (lm-eval's `higher_is_better`):
loss = baseline − variant when higher is better, variant − baseline otherwise. `max_loss_abs` is in
the metric's own unit (0.02 = 2 points of accuracy), `max_loss_rel_pct` in % of the baseline value;
the tighter of the two is the margin δ. With per-sample logs on both sides (the default) the gate runs
a paired non-inferiority test (evalgate.stats) against δ; without them it compares point estimates.
SLOs bound serving metrics. A variant that failed to run is rejected with its error.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from evalgate import stats
from evalgate.config import BASELINE, Config
from evalgate.fidelity import HIGHER_IS_BETTER, fidelity_metrics
from evalgate.metrics import gate_metric_key

# lm-eval aggregations over per-sample (loglikelihood, weight) pairs, as functions of stacked columns
AGGREGATES = {
    "word_perplexity": lambda x, axis: np.exp(-x[0].sum(axis=axis) / x[1].sum(axis=axis)),
    "byte_perplexity": lambda x, axis: np.exp(-x[0].sum(axis=axis) / x[1].sum(axis=axis)),
    "bits_per_byte": lambda x, axis: -x[0].sum(axis=axis) / x[1].sum(axis=axis) / math.log(2),
}


def load_result(d: Path) -> dict:
    """One variant's outputs as the gate sees them: status, flat metrics, metric directions."""
    status = json.loads((d / "status.json").read_text()) if (d / "status.json").exists() else {
        "ok": False, "error": f"{d}/status.json missing: the variant did not run"}
    metrics = json.loads((d / "metrics.json").read_text()) if (d / "metrics.json").exists() else {}
    hib = {}
    if (d / "lm_eval.json").exists():
        for task, m in json.loads((d / "lm_eval.json").read_text()).get("higher_is_better", {}).items():
            for name, up in m.items():
                hib[f"lmeval/{task}/{name}"] = up
    return {"status": status, "metrics": metrics, "higher_is_better": hib, "dir": d}


def sample_values(rows, metric: str, flt: str) -> dict:
    """doc_id → per-sample value of `metric` under filter `flt`, from lm-eval's logged samples."""
    return {r["doc_id"]: r[metric] for r in rows if r.get("filter", flt) == flt and metric in r}


def pair(b: dict, v: dict):
    """Both sides' values on the docs both answered, in doc order (None when there are none)."""
    ids = sorted(set(b) & set(v))
    if not ids:
        return None
    return np.array([b[i] for i in ids], float), np.array([v[i] for i in ids], float)


def load_samples(d: Path, task: str) -> list[dict] | None:
    f = d / f"samples_{task}.jsonl"
    return [json.loads(line) for line in open(f)] if f.exists() else None


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


def _higher_is_better(key: str, hib: dict) -> bool:
    if key.startswith("fidelity/"):
        return HIGHER_IS_BETTER.get(key.rsplit("/", 1)[-1], False)
    # hib keys lack the filter part: lmeval/task/metric
    return hib.get("/".join(key.split("/")[:3]), True)


def add_fidelity(results: dict[str, dict], baseline: str) -> None:
    """Put each variant's `fidelity/*` metrics (against the baseline) into its metrics, in place."""
    base = results.get(baseline)
    if not base or not base["status"].get("ok"):
        return
    for r in results.values():
        if r["status"].get("ok") and "dir" in r:
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
        up = _higher_is_better(key, base["higher_is_better"])
        row["margin"] = delta = margin(th, b)
        paired = paired_check(cfg, key, delta, base, var, up)
        if paired is not None:
            row.update(paired, loss_rel_pct=100 * paired["loss"] / abs(b) if b else None)
            checks.append(row)
            continue
        loss = (b - v) if up else (v - b)
        rel = 100 * loss / abs(b) if b else (0.0 if loss <= 0 else float("inf"))
        fails = []
        if th.max_loss_abs is not None and loss > th.max_loss_abs:
            fails.append(f"loss {loss:.4g} > {th.max_loss_abs:g}")
        if th.max_loss_rel_pct is not None and rel > th.max_loss_rel_pct:
            fails.append(f"loss {rel:.3g}% > {th.max_loss_rel_pct:g}%")
        row.update(loss=loss, loss_rel_pct=rel, passed=not fails,
                   reason=f"{key}: {b:.4g} → {v:.4g} ({'; '.join(fails) or 'within limits'})")
        checks.append(row)
    return checks


def check_slo(cfg: Config, var: dict) -> list[dict]:
    checks = []
    for metric, lim in cfg.slo.items():
        v = var["metrics"].get(metric)
        bad = v is None or ("max" in lim and v > lim["max"]) or ("min" in lim and v < lim["min"])
        bound = " and ".join(f"{k} {x:g}" for k, x in lim.items())
        checks.append({"metric": metric, "value": v, **lim, "passed": not bad,
                       "reason": f"{metric} = {v if v is None else f'{v:.4g}'} (SLO {bound})"})
    return checks


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
        checks = ([] if name == base_name else check_quality(cfg, base, var)) + check_slo(cfg, var)
        failed = [c["reason"] for c in checks if not c["passed"]]
        verdict = "accept" if not failed else "reject"
        reason = "; ".join(failed) if failed else ("reference" if name == base_name else "all checks passed")
        out[name] = {"verdict": verdict, "reason": reason, "checks": checks}
    return {"baseline": base_name, "variants": out, "best": best_variant(cfg, results, out),
            "statistics": cfg.gate.get("statistics", {})}


def best_variant(cfg: Config, results: dict, verdicts: dict) -> str | None:
    """The accepted variant with the highest `report.rank_by` (default: output throughput)."""
    key = cfg.report.get("rank_by", "output_throughput")
    lower = cfg.report.get("rank_lower_is_better", False)
    ok = [(results[n]["metrics"].get(key), n) for n, v in verdicts.items()
          if v["verdict"] == "accept" and results[n]["metrics"].get(key) is not None]
    if not ok:
        return None
    return (min(ok) if lower else max(ok))[1]
