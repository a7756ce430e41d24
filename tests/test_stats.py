"""Gate statistics: the paired non-inferiority test, its error rates proven by simulation, and the
gate's use of lm-eval per-sample logs."""
import json

import numpy as np
import pytest

from evalgate.config import parse
from evalgate.gate import AGGREGATES, decide
from evalgate.stats import newcombe_paired, noninferiority

TRIALS, N, P_BASE, MARGIN = 300, 400, 0.9, 0.02


def planted(rng, loss, noise=0.02, n=N, p=P_BASE):
    """Baseline 0/1 outcomes and a variant whose expected loss is `loss`, plus symmetric flip noise."""
    base = rng.random(n) < p
    var = base.copy()
    var[base & (rng.random(n) < (loss + noise / 2) / p)] = False
    var[~base & (rng.random(n) < (noise / 2) / (1 - p))] = True
    return base, var


def rates(loss, seed):
    rng = np.random.default_rng(seed)
    verdicts = [noninferiority(*planted(rng, loss), MARGIN).verdict for _ in range(TRIALS)]
    return {v: verdicts.count(v) / TRIALS for v in ("non-inferior", "inferior", "inconclusive")}


def test_false_accept_rate_at_the_margin_is_at_most_5pct():
    r = rates(MARGIN, seed=11)
    assert r["non-inferior"] <= 0.05, r


def test_power_at_twice_the_margin_is_at_least_80pct():
    r = rates(2 * MARGIN, seed=12)
    assert 1 - r["non-inferior"] >= 0.80, r      # rejected (inferior, or inconclusive → reject)
    assert r["inferior"] > 0.3, r                # and often proven inferior outright


def test_no_loss_is_mostly_accepted():
    assert rates(0.0, seed=13)["non-inferior"] >= 0.7


def test_newcombe_interval_contains_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    b, v = planted(rng, 0.03, n=200)
    d, lo, hi = newcombe_paired(b, v, 0.05)
    assert lo <= d <= hi
    b4, v4 = np.tile(b, 4), np.tile(v, 4)
    d4, lo4, hi4 = newcombe_paired(b4, v4, 0.05)
    assert d4 == pytest.approx(d) and hi4 - lo4 < hi - lo


def test_small_sample_is_inconclusive_with_its_mde():
    t = noninferiority(np.ones(20), np.ones(20), MARGIN)
    assert t.verdict == "inconclusive" and t.mde > MARGIN
    assert "n=20" in t.line("m") and "δ=0.02" in t.line("m")


def test_aggregate_perplexity_bootstrap():
    rng = np.random.default_rng(0)
    base = np.c_[rng.normal(-10, 2, 300), rng.integers(4, 9, 300)]
    worse = base.copy()
    worse[:, 0] -= 1.0                                # every sentence 1 nat less likely
    ppl = AGGREGATES["word_perplexity"]
    t = noninferiority(base, worse, margin=0.05, higher_is_better=False, kind="aggregate", statistic=ppl)
    assert t.verdict == "inferior" and t.lcb <= t.loss <= t.ucb
    same = noninferiority(base, base.copy(), margin=0.05, higher_is_better=False, kind="aggregate", statistic=ppl)
    assert same.verdict == "non-inferior"


def _write(d, acc, ppl_ll):
    d.mkdir(parents=True)
    (d / "status.json").write_text('{"ok": true}')
    (d / "metrics.json").write_text(json.dumps({
        "lmeval/t/acc/none": float(np.mean(acc)), "output_throughput": 10.0,
        "lmeval/t/word_perplexity/none": float(np.exp(-np.sum(ppl_ll) / (5 * len(ppl_ll))))}))
    (d / "lm_eval.json").write_text(json.dumps({"higher_is_better": {"t": {"acc": True, "word_perplexity": False}}}))
    with open(d / "samples_t.jsonl", "w") as f:
        for i, (a, ll) in enumerate(zip(acc, ppl_ll)):
            f.write(json.dumps({"doc_id": i, "filter": "none", "acc": float(a), "word_perplexity": [ll, 5]}) + "\n")


def test_gate_pairs_lm_eval_samples(tmp_path):
    from evalgate.gate import load_result

    rng = np.random.default_rng(1)
    acc = rng.random(N) < P_BASE
    ll = rng.normal(-10, 1, N)
    _write(tmp_path / "baseline", acc, ll)
    _write(tmp_path / "same", acc, ll)
    bad = acc.copy()
    bad[np.flatnonzero(acc)[:40]] = False             # 10 points lost
    _write(tmp_path / "bad", bad, ll)
    cfg = parse({"model": {"source": "local", "id": "m"}, "engine": {"name": "hf"},
                 "workload": {"source": "tasks", "tasks": ["t"], "max_tokens": 4},
                 "eval": {"tasks": ["t"]}, "baseline": {}, "variants": {"same": {}, "bad": {}},
                 "gate": {"quality": {"t/acc": {"max_loss_abs": 0.02},
                                                              "t/word_perplexity": {"max_loss_rel_pct": 2}}}})
    g = decide(cfg, {n: load_result(tmp_path / n) for n in ("baseline", "same", "bad")})
    assert g["variants"]["same"]["verdict"] == "accept"
    bad_v = g["variants"]["bad"]
    assert bad_v["verdict"] == "reject" and "→ inferior" in bad_v["reason"]
    (acc_check,) = [c for c in bad_v["checks"] if c["metric"] == "lmeval/t/acc/none"]
    assert acc_check["test"]["n"] == N and acc_check["loss"] == pytest.approx(0.1)


def test_fidelity_metrics_gate_as_point_estimates(tmp_path):
    from evalgate.gate import load_result

    rng = np.random.default_rng(2)
    acc, ll = rng.random(N) < P_BASE, rng.normal(-10, 1, N)
    for name in ("baseline", "v"):
        _write(tmp_path / name, acc, ll)
    cfg = parse({"model": {"source": "local", "id": "m"}, "engine": {"name": "hf"},
                 "workload": {"source": "tasks", "tasks": ["t"], "max_tokens": 4},
                 "eval": {"tasks": ["t"]}, "baseline": {}, "variants": {"v": {}},
                 "gate": {"quality": {"fidelity/answer_flip_rate": {"max_loss_abs": 0.05}}}})
    results = {n: load_result(tmp_path / n) for n in ("baseline", "v")}
    results["baseline"]["metrics"]["fidelity/answer_flip_rate"] = 0.0
    results["v"]["metrics"]["fidelity/answer_flip_rate"] = 0.08
    g = decide(cfg, results)
    assert g["variants"]["v"]["verdict"] == "reject" and "answer_flip_rate" in g["variants"]["v"]["reason"]
