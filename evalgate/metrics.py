"""The one place metric names are made, so every engine and variant lines up in MLflow's compare view.

Serving metrics reuse `vllm bench serve`'s keys unchanged (`median_ttft_ms`, `p99_tpot_ms`,
`output_throughput`, …). Definitions, once:
  TTFT  time from sending a request to its first output token;
  TPOT  (e2e latency − TTFT) / (output tokens − 1): mean time per output token after the first;
  ITL   gap between two consecutive output tokens (every gap of every request is one sample);
  E2EL  time from sending a request to its last token.
lm-eval results become `lmeval/<task>/<metric>/<filter>` (lm-eval's `metric,filter` has a comma,
which MLflow refuses).
"""
from __future__ import annotations

import math

PERCENTILES = (50, 90, 99)


def stat_keys(metric: str, values_ms: list[float]) -> dict[str, float]:
    """mean/median/p90/p99/std of one latency metric, in vLLM's naming."""
    import numpy as np

    if not values_ms:
        return {}
    a = np.asarray(values_ms, dtype=float)
    out = {f"mean_{metric}_ms": float(a.mean()), f"std_{metric}_ms": float(a.std())}
    for p in PERCENTILES:
        out[f"{'median' if p == 50 else f'p{p}'}_{metric}_ms"] = float(np.percentile(a, p))
    return out


def lmeval_key(task: str, metric_filter: str) -> str:
    """`("fx_add", "exact_match,none")` → `lmeval/fx_add/exact_match/none`."""
    metric, _, flt = metric_filter.partition(",")
    return f"lmeval/{task}/{metric}/{flt or 'none'}"


def flatten_lmeval(results: dict) -> dict[str, float]:
    """lm-eval's `results` section → flat finite floats under our names (stderr kept as `_stderr`)."""
    out = {}
    for task, res in results.items():
        for k, v in res.items():
            if k == "alias" or "," not in k or not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            if math.isfinite(v):
                name, _, flt = k.partition(",")
                out[lmeval_key(task, f"{name},{flt}")] = float(v)
    return out


def gate_metric_key(short: str) -> str:
    """A gate threshold key `task/metric[/filter]` → the flat lm-eval key (filter defaults to none)."""
    parts = short.split("/")
    if parts[0] == "fidelity":
        return short
    return "lmeval/" + "/".join(parts if len(parts) == 3 else [*parts, "none"])
