"""The gate: every variant against the baseline, a verdict with its reason.

A threshold bounds the *loss* of a quality metric, direction-aware (lm-eval's `higher_is_better`):
loss = baseline − variant when higher is better, variant − baseline otherwise. `max_loss_abs` is in
the metric's own unit (0.02 = 2 points of accuracy), `max_loss_rel_pct` in % of the baseline value;
the tighter of the two is the margin δ. With per-sample logs on both sides (the default) the gate runs
a paired non-inferiority test (evalgate.stats) against δ; without them it compares point estimates.
SLOs bound serving metrics. A variant that failed to run is rejected with its error.

What sequential early rejection and the fidelity screen (both in the variant's run) use of it:
`margin`, `higher_is_better`, `compare_samples` + `test_row` (one metric's paired test, as a check row)
and `fidelity_screen`. The gate reads results only as loaded by the results store (evalgate.results);
ranking the accepted variants is evalgate.select's.
"""
from __future__ import annotations

import math

from evalgate import results as store
from evalgate import select, stats
from evalgate.config import BASELINE, Config, Threshold
from evalgate.fidelity import HIGHER_IS_BETTER, IDEAL
from evalgate.metrics import gate_metric_key


def margin(th, baseline_value: float) -> float | None:
    """δ: the tighter of the absolute and the relative limit. The relative limit is a share of the
    baseline's value: at a baseline of exactly 0 it has nothing to be a share of and does not apply (it
    would make δ = 0, which no paired test can pass: every variant "inconclusive", even one with the same
    answers). δ is then the absolute limit, or None when there is none: the check is then that the
    variant loses nothing against the baseline, on the point estimates (`zero_baseline_check`)."""
    limits = [th.max_loss_abs] if th.max_loss_abs is not None else []
    if th.max_loss_rel_pct is not None and baseline_value != 0:
        limits.append(th.max_loss_rel_pct / 100 * abs(baseline_value))
    return min(limits) if limits else None


def zero_baseline_check(key: str, b: float, v: float, up: bool) -> dict:
    """A relative margin against a baseline of 0, with no absolute one: pass when the variant is no worse
    (loss ≤ 0) on the point estimates."""
    loss = (b - v) if up else (v - b)
    return {"loss": loss, "loss_rel_pct": None, "passed": loss <= 0,
            "reason": f"{key}: {b:.4g} → {v:.4g} (baseline 0: max_loss_rel_pct has nothing to be a share of, "
                      f"so no loss is allowed; loss {loss:+.4g})"}


def higher_is_better(key: str, directions: dict) -> bool:
    """Direction of a gated metric: fidelity metrics by name, lm-eval metrics by their task's
    `higher_is_better` (`directions`: `lmeval/<task>/<metric>` → bool, without the filter part)."""
    if key.startswith("fidelity/"):
        return HIGHER_IS_BETTER.get(key.rsplit("/", 1)[-1], False)
    return directions.get("/".join(key.split("/")[:3]), True)


def compare_samples(key: str, delta: float, base_rows: list[dict] | None, var_rows: list[dict] | None, up: bool,
                    alpha: float, power: float = 0.8, seed: int = 0) -> stats.Test | None:
    """The paired non-inferiority test of one lm-eval metric (`lmeval/<task>/<metric>/<filter>`) on both
    sides' logged samples of its task (None without samples, docs in common or a known aggregate)."""
    _, _, metric, flt = key.split("/")
    if not base_rows or not var_rows:
        return None
    p = stats.pair(store.sample_values(base_rows, metric, flt), store.sample_values(var_rows, metric, flt))
    return None if p is None else stats.paired_test(*p, metric, delta, up, alpha, power, seed)


def test_row(key: str, baseline_value: float, delta: float, test: stats.Test) -> dict:
    """A paired test as a gate check row (`sequential`'s stop reports its check this way too)."""
    return {"metric": key, "baseline": baseline_value, "margin": delta, "passed": test.verdict == "non-inferior",
            "loss": test.loss, "test": test.as_dict(), "reason": test.line(key)}


def paired_check(key: str, delta: float, base: dict, var: dict, up: bool, statistics: dict, seed: int) -> dict | None:
    """The non-inferiority test of one metric, or None without per-sample logs on both sides."""
    if not key.startswith("lmeval/") or not statistics.get("enabled", True) or "dir" not in base or "dir" not in var:
        return None  # fidelity metrics are already comparisons with the baseline: point estimates
    task = key.split("/")[1]
    t = compare_samples(key, delta, store.samples(base, task), store.samples(var, task), up,
                        statistics.get("alpha", 0.05), statistics.get("power", 0.8), seed)
    if t is None:
        return None
    on_inconclusive = statistics.get("on_inconclusive", "reject")
    passed = t.verdict == "non-inferior" or (t.verdict == "inconclusive" and on_inconclusive == "accept")
    return {"passed": passed, "loss": t.loss, "test": t.as_dict(), "reason": t.line(key)}


def check_quality(thresholds: tuple[Threshold, ...], statistics: dict, seed: int, base: dict, var: dict) -> list[dict]:
    checks = []
    for th in thresholds:
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
        if delta is None:
            row.update(zero_baseline_check(key, b, v, up))
            checks.append(row)
            continue
        paired = paired_check(key, delta, base, var, up, statistics, seed)
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


def fidelity_screen(thresholds: tuple[Threshold, ...], metrics: dict[str, float]) -> dict | None:
    """The cheap check before the expensive ones (run in the variant's quality phase): the first
    `fidelity/*` threshold this variant already breaks, as an early-rejection record (None: go on).
    Point estimates against the ideal (the baseline against itself: KL 0, agreement 1, no flips)."""
    for th in thresholds:
        if not th.metric.startswith("fidelity/") or th.metric not in metrics:
            continue
        name = th.metric.rsplit("/", 1)[-1]
        row = point_check(th, th.metric, IDEAL.get(name, 0.0), metrics[th.metric], HIGHER_IS_BETTER.get(name, False))
        if not row["passed"]:
            return {"kind": "fidelity", "reason": f"fidelity screen: {row['reason']} (not evaluated or profiled further)",
                    "check": row}
    return None


def check_limits(limits: dict, var: dict) -> list[dict]:
    """`gate.limits`: bounds on the variant's own profile metrics (e.g. p99_ttft_ms: {max: 200})."""
    checks = []
    for metric, lim in limits.items():
        v = var["metrics"].get(metric)
        bad = v is None or ("max" in lim and v > lim["max"]) or ("min" in lim and v < lim["min"])
        bound = " and ".join(f"{k} {x:g}" for k, x in lim.items())
        checks.append({"metric": metric, "value": v, **lim, "passed": not bad,
                       "reason": f"{metric} = {v if v is None else f'{v:.4g}'} (limit {bound})"})
    return checks


def check_output_length(bounds: dict | None, var: dict) -> list[dict]:
    """`gate.output_length`: the variant's total output tokens over the baseline's on the same greedy
    requests (the profile's first level) within [min_ratio, max_ratio]: speed must not come from
    answering short (or padding long). MLPerf's rule is 0.9–1.1."""
    lim = bounds or {}
    ratio = var["metrics"].get("output_length_ratio")
    if not lim or ratio is None:
        return []
    lo, hi = lim.get("min_ratio", 0.0), lim.get("max_ratio", math.inf)
    return [{"metric": "output_length_ratio", "value": ratio, "min_ratio": lo, "max_ratio": hi,
             "passed": lo <= ratio <= hi,
             "reason": f"output length {ratio:.3f}× the baseline's on the same prompts (allowed {lo:g}–{hi:g}×)"}]


def _headline(base: dict, prefix: str) -> dict[str, float]:
    """The baseline's `prefix`/<metric> differences (aa: its A/A sweeps; alone: first vs alone), headline
    metrics only (per-level ones stay in its metrics)."""
    return {k.removeprefix(f"{prefix}/"): v for k, v in base.get("metrics", {}).items()
            if k.startswith(f"{prefix}/") and "/" not in k.removeprefix(f"{prefix}/")}


def decide(cfg: Config, results: dict[str, dict]) -> dict:
    """Verdicts for every variant in `cfg.variants` (one that has no results is rejected too)."""
    base_name = BASELINE
    base = results.get(base_name) or {"status": {"ok": False, "error": "no results"}}
    out = {}
    for name in cfg.variants:
        var = results.get(name) or {"status": {"ok": False, "error": "no results: the variant did not run"}}
        if not var["status"].get("ok"):
            st = var["status"]
            why = f"failed to run: {st.get('error')}"
            if st.get("transient"):
                why = f"failed to run ({st['transient']}, transient: not final, the next repro runs it again): {st.get('error')}"
            out[name] = {"verdict": "reject", "reason": why, "checks": [],
                         **({"transient": st["transient"]} if st.get("transient") else {})}
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
        try:
            if name == base_name:
                checks = check_limits(cfg.limits, var)
            else:
                checks = (check_quality(cfg.thresholds, cfg.gate.get("statistics", {}), cfg.seed, base, var)
                          + check_output_length(cfg.gate.get("output_length"), var) + check_limits(cfg.limits, var))
        except ValueError as e:  # a corrupted results file (evalgate.results): this variant only, with the reason
            out[name] = {"verdict": "reject", "reason": f"results unreadable: {' '.join(str(e).split())[:500]}",
                         "checks": []}
            continue
        failed = [c["reason"] for c in checks if not c["passed"]]
        verdict = "accept" if not failed else "reject"
        reason = "; ".join(failed) if failed else ("reference" if name == base_name else "all checks passed")
        out[name] = {"verdict": verdict, "reason": reason, "checks": checks}
        moved, asked = (var.get("metrics", {}).get(f"recheck/{k}") for k in ("changed_docs", "docs"))
        if verdict == "reject" and moved:   # evalgate.runner asked the docs behind a failing check again
            out[name]["reason"] = (f"{reason}; not reproducible: {moved:.0f} of the {asked:.0f} docs where it "
                                   "differs from the baseline answered differently when asked again, so the "
                                   "engine's results vary between identical greedy requests")
        warnings = []
        unreproduced = var.get("metrics", {}).get("sequential/unreproducible_docs")
        if unreproduced:   # gate.sequential.on_unreproducible evaluate_on: a look's stop the repeat did not bear out
            warnings.append(f"not reproducible: {unreproduced:.0f} docs scored differently when a look's docs were "
                            "asked again (results/<variant>/unreproducible.json); its quality is from a fresh evaluation")
        first = var.get("metrics", {}).get("retry/first_unreproducible_docs")
        if first is not None:   # faults.retry_unreproducible: this verdict is the second evaluation's
            warnings.append(f"its first evaluation was not reproducible ({first:.0f} docs scored differently between "
                            "identical requests: results/<variant>/unreproducible.first.json); the verdict is from a "
                            "second evaluation with the device to itself")
        if warnings:
            out[name].update(warnings=warnings, reason="; ".join([out[name]["reason"], *(f"warning: {w}" for w in warnings)]))
    spec = [n for n in cfg.variants if cfg.variants[n].speculative["method"] != "none"
            and "output_throughput" in results.get(n, {}).get("metrics", {})]
    rank_by = cfg.report.get("rank_by", "output_throughput")
    best = select.best_overall(results, out, rank_by)
    return {"baseline": base_name, "variants": out, "best": best,
            "best_within_noise": select.within_noise_of_best(results, out, best, rank_by),
            "best_per_level": select.per_level(results, out), "speculation": select.speculation(results, spec),
            "noise_floor_pct": _headline(base, "aa"),
            "alone_check_pct": _headline(base, "alone"),
            "statistics": cfg.gate.get("statistics", {})}
