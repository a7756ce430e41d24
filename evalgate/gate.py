"""The gate: every variant against the baseline, a verdict with its reason.

A threshold bounds the *loss* of a quality metric, direction-aware (lm-eval's `higher_is_better`):
loss = baseline − variant when higher is better, variant − baseline otherwise. `max_loss_abs` is in
the metric's own unit (0.02 = 2 points of accuracy), `max_loss_rel_pct` in % of the baseline value.
SLOs bound serving metrics. A variant that failed to run is rejected with its error.
"""
from __future__ import annotations

import json
from pathlib import Path

from evalgate.config import Config
from evalgate.metrics import gate_metric_key


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
    return {"status": status, "metrics": metrics, "higher_is_better": hib}


def _higher_is_better(key: str, hib: dict) -> bool:
    # hib keys lack the filter part: lmeval/task/metric
    return hib.get("/".join(key.split("/")[:3]), True)


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
        loss = (b - v) if _higher_is_better(key, base["higher_is_better"]) else (v - b)
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
    base_name = cfg.gate["baseline"]
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
        checks = ([] if name == base_name else check_quality(cfg, base, var)) + check_slo(cfg, var)
        failed = [c["reason"] for c in checks if not c["passed"]]
        verdict = "accept" if not failed else "reject"
        reason = "; ".join(failed) if failed else ("reference" if name == base_name else "all checks passed")
        out[name] = {"verdict": verdict, "reason": reason, "checks": checks}
    return {"baseline": base_name, "variants": out, "best": best_variant(cfg, results, out)}


def best_variant(cfg: Config, results: dict, verdicts: dict) -> str | None:
    """The accepted variant with the highest `report.rank_by` (default: output throughput)."""
    key = cfg.report.get("rank_by", "output_throughput")
    lower = cfg.report.get("rank_lower_is_better", False)
    ok = [(results[n]["metrics"].get(key), n) for n, v in verdicts.items()
          if v["verdict"] == "accept" and results[n]["metrics"].get(key) is not None]
    if not ok:
        return None
    return (min(ok) if lower else max(ok))[1]
