"""Sequential early rejection: evaluate a variant's docs in shuffled steps and stop as soon as one gated
metric is already clearly inferior to the baseline, so a broken variant does not pay for a full eval.

Looks at cumulative fractions f_1 < … < f_K of each gated task's docs, in one seeded order per task that
every variant shares. At each look the gate's own paired test (evalgate.gate.compare_samples) runs on the
docs evaluated so far, against the baseline's per-sample results, at level alpha / K (Bonferroni over
the looks): a variant whose true loss is at most δ is stopped with probability ≤ alpha. A stop is a
rejection, never an acceptance, so the gate's false-accept rate is unchanged; its cost in power and its
savings are measured by simulation in tests/test_sequential.py. A variant that is not stopped gets the
normal full evaluation, with the docs of the looks answered from lm-eval's request cache (`use_cache`).

Hand-written because lm-eval evaluates a fixed doc set in one call and has no stopping rule; the
statistics are the gate's (scipy and the Newcombe interval in evalgate.stats).
"""
from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable

import numpy as np

from evalgate import gate
from evalgate.config import Threshold
from evalgate.metrics import gate_metric_key
from evalgate.results import sample_values


def enabled(sequential: dict | None) -> bool:
    """`gate.sequential` asks for looks (off unless `enabled` and some `looks` are set)."""
    sequential = sequential or {}
    return bool(sequential.get("enabled", False) and sequential.get("looks"))


def gated_tasks(thresholds: tuple[Threshold, ...]) -> list[str]:
    """Tasks with a gated lm-eval metric: the only ones the looks evaluate."""
    keys = (gate_metric_key(th.metric) for th in thresholds)
    return sorted({k.split("/")[1] for k in keys if k.startswith("lmeval/")})


def schedule(n_docs: dict[str, int], looks: list[float], seed: int) -> list[dict[str, list[int]]]:
    """Per look, each task's docs evaluated by then: growing prefixes of one seeded shuffle per task
    (seeded by the task's name too, so adding a task does not reshuffle the others)."""
    perms = {t: np.random.default_rng([seed, zlib.crc32(t.encode())]).permutation(n) for t, n in n_docs.items()}
    return [{t: sorted(int(i) for i in p[:max(1, math.ceil(f * len(p)))]) for t, p in perms.items()} for f in looks]


def interim_check(thresholds: tuple[Threshold, ...], base: dict, base_rows: dict[str, list[dict] | None],
                  rows: dict[str, list[dict]], alpha: float, seed: int = 0) -> dict | None:
    """The first gated metric already inferior (lower bound of the loss > δ at level `alpha`) on the
    docs evaluated so far, as a gate check row; None while every metric may still pass. `base`: the
    baseline's loaded result; `base_rows`: its logged samples per task, read once per variant."""
    for th in thresholds:
        key = gate_metric_key(th.metric)
        if not key.startswith("lmeval/"):
            continue
        task = key.split("/")[1]
        b_value = base["metrics"].get(key)
        if b_value is None:
            continue
        delta = gate.margin(th, b_value)
        if delta is None:  # a relative margin against a baseline of 0: the gate decides on point estimates
            continue
        t = gate.compare_samples(key, delta, base_rows.get(task), rows.get(task),
                                 gate.higher_is_better(key, base["higher_is_better"]), alpha, seed=seed)
        if t is not None and t.verdict == "inferior":
            return gate.test_row(key, b_value, delta, t)
    return None


def evaluate_in_looks(evaluate_docs: Callable[[dict[str, list[int]]], dict[str, list[dict]]], n_docs: dict[str, int],
                      baseline: Callable[[], tuple[dict, dict[str, list[dict] | None]] | None],
                      thresholds: tuple[Threshold, ...], looks: list[float], alpha: float = 0.01, seed: int = 0,
                      repeat: Callable[[dict[str, list[int]]], dict[str, list[dict]]] | None = None,
                      on_unreproducible: str = "reject") -> dict:
    """Evaluate the looks in turn; `evaluate_docs({task: doc_ids})` returns lm-eval's logged samples of
    just those docs; `baseline()` returns the baseline's result and samples (evalgate.results), or None
    (nothing to compare with: no look stops); it is called once, after the first look's docs are
    evaluated, so that evaluation need not wait for the baseline's. `alpha` is split over the looks.
    `repeat` (like `evaluate_docs`, bypassing any request cache): a stop's task is evaluated again on the
    same docs first (`repeat_check`). A stop the repeat reproduces stands. One it does not is an engine
    that answers identical greedy requests differently: with `on_unreproducible` "reject" the stop stands
    and its reason says it was not reproducible; with "evaluate_on" the look is checked on the repeat and
    the looks go on (`unreproducible` lists each such look; the first answers are kept under
    `<task>.unreproduced`). Returns the outcome (`stopped`, counts, timings, `unreproducible`, `rows`: every logged
    sample, a reproduced stop's repeat under `<task>.repeat`)."""
    looks = list(looks)
    alpha = alpha / len(looks)
    unreproducible: list[dict] = []   # looks whose stop the repeat did not reproduce (on_unreproducible)
    rows: dict[str, list[dict]] = {t: [] for t in n_docs}
    seen: dict[str, set] = {t: set() for t in n_docs}
    t0 = time.perf_counter()
    for k, (frac, want) in enumerate(zip(looks, schedule(n_docs, looks, seed)), 1):
        new = {t: [i for i in ids if i not in seen[t]] for t, ids in want.items()}
        new = {t: ids for t, ids in new.items() if ids}
        if new:
            for task, logged in evaluate_docs(new).items():
                rows.setdefault(task, []).extend(logged)
                seen.setdefault(task, set()).update(r["doc_id"] for r in logged)
        if k == 1:
            base, base_rows = baseline() or (None, None)
        check = None if base is None else interim_check(thresholds, base, base_rows, rows, alpha, seed)
        used = sum(len(s) for s in seen.values())
        out = {"look": k, "looks": len(looks), "fraction": frac, "alpha_per_look": alpha, "docs_evaluated": used,
               "eval_s": time.perf_counter() - t0, "rows": rows}
        repeated: set[str] = set()   # a task is asked again at most once per look
        again = None
        while check and repeat is not None and check["metric"].split("/")[1] not in repeated:
            again = repeat_check(repeat, check, rows, thresholds, base, base_rows, alpha, seed)
            repeated.add(again["task"])
            out["eval_s"] = time.perf_counter() - t0
            if again["reproduced"] or on_unreproducible == "reject":
                break
            # not reproducible: the first answers are not the engine's reproducible ones, so the look's
            # check uses the repeat's and the evaluation goes on (evalgate.runner then evaluates uncached)
            task, kept = again["task"], rows.get(f"{again['task']}.unreproduced", [])
            done = {r["doc_id"] for r in kept}   # an earlier look's first answers stay; this look's join them
            rows[f"{task}.unreproduced"] = kept + [r for r in rows[task] if r["doc_id"] not in done]
            rows[task] = again.pop("rows")
            unreproducible.append({"look": k, **{x: again[x] for x in ("task", "docs", "changed_docs", "outcome")}})
            again = None
            check = interim_check(thresholds, base, base_rows, rows, alpha, seed)
        out["unreproducible"] = unreproducible
        if check:
            reason = (f"stopped early at look {k} of {len(looks)} ({frac:.0%} of the docs, α = {alpha:g} per look): "
                      f"{check['reason']}")
            if again is not None:
                rows[f"{again['task']}.repeat"] = again.pop("rows")
                if not again["reproduced"]:
                    reason += (f"; not reproducible: the same {again['docs']} docs evaluated again scored "
                               f"{again['changed_docs']} differently ({again['outcome']}), so the engine's results "
                               f"vary between identical greedy requests")
            return {**out, "stopped": True, "check": check, "reason": reason, **({"repeat": again} if again else {})}
    return {**out, "stopped": False}


def repeat_check(repeat: Callable, check: dict, rows: dict[str, list[dict]], thresholds: tuple[Threshold, ...],
                 base: dict, base_rows: dict, alpha: float, seed: int) -> dict:
    """The stop's task evaluated once more on the same docs, and the look's check on those results.
    Greedy evaluation of identical requests must give identical results (up to float noise); where it does
    not, the stop rests on an engine that is not reproducible, and the reason says so (seen on an H100 with
    vLLM draft speculation: fx_ppl 2.4 worse at a look while every other run of the variant matched the
    baseline to every digit, docs/results/h100-2026-11-26-18). A repeat costs one task's docs, on a stop only."""
    task = check["metric"].split("/")[1]
    docs = sorted({r["doc_id"] for r in rows.get(task, [])})   # one row per filter: each doc once
    again = repeat({task: docs}).get(task, [])
    metric, flt = (check["metric"].split("/") + ["none"])[2:4]
    first, then = sample_values(rows.get(task, []), metric, flt), sample_values(again, metric, flt)
    changed = len(differing(first, then))
    recheck = interim_check(thresholds, base, base_rows, {**rows, task: again}, alpha, seed)
    reproduced = recheck is not None and recheck["metric"] == check["metric"]
    outcome = ("inferior again: " + recheck["reason"]) if reproduced else (
        "then " + (recheck["reason"] if recheck else "not inferior"))
    return {"task": task, "docs": len(docs), "changed_docs": changed, "reproduced": reproduced, "outcome": outcome,
            "rows": again}


def differing(first: dict, then: dict) -> list:
    """The docs of `first` (doc_id → logged value) that `then` lacks or scores otherwise (`same_value`)."""
    return [d for d, v in first.items() if d not in then or not same_value(v, then[d])]


def same_value(a, b, tol: float = 1e-6) -> bool:
    """One logged per-sample value against another: equal, or floats (also inside lists, e.g. perplexity's
    [log-likelihood, words]) within a relative `tol`."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= tol * (1 + abs(a))
    return a == b
