"""Gate maths on fixed numbers: direction-aware losses, absolute and relative limits, SLOs, failures."""
import pytest

from evalgate.config import parse
from evalgate.gate import decide
from evalgate.metrics import flatten_lmeval, gate_metric_key


def cfg(quality=None, slo=None, variants=("baseline", "a", "b")):
    return parse({
        "model": {"source": "local", "id": "m"}, "engine": {"name": "hf"},
        "workload": {"source": "tasks", "tasks": ["t"], "max_tokens": 4},
        "eval": {"tasks": ["t"]},
        "gate": {"limits": slo or {}, "quality": quality or {
            "t/acc": {"max_loss_abs": 0.02, "max_loss_rel_pct": 5}, "t/ppl": {"max_loss_rel_pct": 10}}},
        "baseline": {}, "variants": {v: {} for v in variants if v != "baseline"}})


def res(acc, ppl, thr=100.0, ok=True, **extra):
    return {"status": {"ok": ok, "error": None if ok else "boom"},
            "metrics": {"lmeval/t/acc/none": acc, "lmeval/t/ppl/none": ppl, "output_throughput": thr, **extra},
            "higher_is_better": {"lmeval/t/acc": True, "lmeval/t/ppl": False}}


def test_accepts_within_limits_and_rejects_beyond():
    g = decide(cfg(), {"baseline": res(0.90, 10.0), "a": res(0.89, 10.5, thr=150), "b": res(0.85, 10.0, thr=200)})
    assert g["variants"]["baseline"]["verdict"] == "accept"
    assert g["variants"]["a"]["verdict"] == "accept"      # 1 point and 5 % ppl: within limits
    assert g["variants"]["b"]["verdict"] == "reject"      # 5 points > 2
    assert "lmeval/t/acc/none" in g["variants"]["b"]["reason"]
    assert g["best"] == "a"                                # b is faster but rejected


def test_lower_is_better_metric_direction():
    # perplexity 10 → 11.5 is a 15 % loss (rejected); 10 → 8 is a gain (accepted)
    g = decide(cfg(), {"baseline": res(0.9, 10.0), "a": res(0.9, 11.5), "b": res(0.9, 8.0)})
    assert g["variants"]["a"]["verdict"] == "reject"
    assert g["variants"]["b"]["verdict"] == "accept"
    (check,) = [c for c in g["variants"]["a"]["checks"] if c["metric"] == "lmeval/t/ppl/none"]
    assert check["loss"] == pytest.approx(1.5) and check["loss_rel_pct"] == pytest.approx(15)


def test_relative_limit_binds_when_tighter():
    c = cfg(quality={"t/acc": {"max_loss_abs": 0.5, "max_loss_rel_pct": 1}})
    g = decide(c, {"baseline": res(0.5, 1), "a": res(0.49, 1), "b": res(0.4951, 1)})
    assert g["variants"]["a"]["verdict"] == "reject"   # 2 % relative
    assert g["variants"]["b"]["verdict"] == "accept"   # 0.98 %


def test_failed_variant_is_rejected_with_its_error_and_missing_one_too():
    g = decide(cfg(), {"baseline": res(0.9, 10), "a": res(0.9, 10, ok=False)})
    assert g["variants"]["a"] == {"verdict": "reject", "reason": "failed to run: boom", "checks": []}
    assert g["variants"]["b"]["verdict"] == "reject" and "did not run" in g["variants"]["b"]["reason"]


def test_failed_baseline_rejects_everything():
    g = decide(cfg(), {"baseline": res(0.9, 10, ok=False), "a": res(0.9, 10), "b": res(0.9, 10)})
    assert all(v["verdict"] == "reject" for v in g["variants"].values())
    assert g["best"] is None


def test_slo_limits_apply_to_every_variant():
    c = cfg(slo={"p99_ttft_ms": {"max": 50}, "output_throughput": {"min": 120}})
    g = decide(c, {"baseline": res(0.9, 10, thr=100, p99_ttft_ms=40), "a": res(0.9, 10, thr=150, p99_ttft_ms=60),
                   "b": res(0.9, 10, thr=150, p99_ttft_ms=30)})
    assert g["variants"]["baseline"]["verdict"] == "reject" and "output_throughput" in g["variants"]["baseline"]["reason"]
    assert g["variants"]["a"]["verdict"] == "reject" and "p99_ttft_ms" in g["variants"]["a"]["reason"]
    assert g["variants"]["b"]["verdict"] == "accept"


def test_missing_metric_rejects():
    r = res(0.9, 10)
    del r["metrics"]["lmeval/t/ppl/none"]
    g = decide(cfg(), {"baseline": res(0.9, 10), "a": r, "b": res(0.9, 10)})
    assert g["variants"]["a"]["verdict"] == "reject" and "missing" in g["variants"]["a"]["reason"]


def test_metric_names():
    flat = flatten_lmeval({"fx_add": {"alias": "fx_add", "exact_match,none": 0.5, "exact_match_stderr,none": 0.1},
                           "fx_ppl": {"word_perplexity,none": 3.0, "bits_per_byte_stderr,none": "N/A"}})
    assert flat == {"lmeval/fx_add/exact_match/none": 0.5, "lmeval/fx_add/exact_match_stderr/none": 0.1,
                    "lmeval/fx_ppl/word_perplexity/none": 3.0}
    assert gate_metric_key("fx_add/exact_match") == "lmeval/fx_add/exact_match/none"
    assert gate_metric_key("gsm8k/exact_match/strict-match") == "lmeval/gsm8k/exact_match/strict-match"


# -- the margin δ, and the paired path where it matters ----------------------------------------------------

def test_margin_is_the_tighter_of_the_two_limits():
    from evalgate.config import Threshold
    from evalgate.gate import margin

    assert margin(Threshold("t/acc", 0.02, 5), 0.9) == pytest.approx(0.02)       # 5 % of 0.9 = 0.045: abs binds
    assert margin(Threshold("t/acc", 0.5, 1), 0.5) == pytest.approx(0.005)       # 1 % of 0.5: rel binds
    assert margin(Threshold("t/ppl", None, 10), -3.0) == pytest.approx(0.3)      # % of |baseline|
    assert margin(Threshold("t/acc", 0.02, None), 123.0) == 0.02


def write_samples(d, acc, up=True, metric="acc"):
    """A run's outputs with lm-eval per-sample logs of one metric t/<metric> (0/1 for acc)."""
    import json

    d.mkdir(parents=True)
    (d / "status.json").write_text('{"ok": true}')
    (d / "metrics.json").write_text(json.dumps({f"lmeval/t/{metric}/none": sum(acc) / len(acc),
                                                "output_throughput": 1.0}))
    (d / "lm_eval.json").write_text(json.dumps({"higher_is_better": {"t": {metric: up}}}))
    (d / "samples_t.jsonl").write_text("".join(json.dumps({"doc_id": i, "filter": "none", metric: float(a)}) + "\n"
                                               for i, a in enumerate(acc)))
    return d


def paired_results(tmp_path, lost, n=1000, base_ok=900, up=True):
    """Baseline with `base_ok` of n right; variant `a` the same less `lost` docs."""
    from evalgate.results import VariantResults

    base = [1] * base_ok + [0] * (n - base_ok)
    var = [0] * lost + base[lost:]
    return {"baseline": VariantResults(write_samples(tmp_path / "baseline", base, up)).load(),
            "a": VariantResults(write_samples(tmp_path / "a", var, up)).load()}


def one_check(c, results, name="a"):
    (check,) = [x for x in decide(c, results)["variants"][name]["checks"] if x["metric"] == "lmeval/t/acc/none"]
    return check


def test_paired_test_uses_the_tighter_relative_margin(tmp_path):
    """3 points lost on 1,000 paired docs: inferior against δ = 1 % of 0.9 (the tighter limit), non-inferior
    against the absolute 0.10 that the looser limit would give."""
    results = paired_results(tmp_path, lost=30)
    rel = one_check(cfg(quality={"t/acc": {"max_loss_abs": 0.10, "max_loss_rel_pct": 1}}, variants=("a",)), results)
    assert rel["margin"] == pytest.approx(0.009) and rel["test"]["verdict"] == "inferior" and not rel["passed"]
    assert rel["loss"] == pytest.approx(0.03) and rel["loss_rel_pct"] == pytest.approx(100 * 0.03 / 0.9)
    absolute = one_check(cfg(quality={"t/acc": {"max_loss_abs": 0.10}}, variants=("a",)), results)
    assert absolute["margin"] == 0.10 and absolute["test"]["verdict"] == "non-inferior" and absolute["passed"]
    assert absolute["reason"].startswith("lmeval/t/acc/none: Δ=+0.03 (one-sided bounds [")
    assert set(absolute) == {"metric", "baseline", "value", "max_loss_abs", "max_loss_rel_pct", "margin", "passed",
                             "loss", "test", "reason", "loss_rel_pct"}


def test_inconclusive_follows_on_inconclusive_and_statistics_can_be_disabled(tmp_path):
    results = paired_results(tmp_path, lost=8, n=200, base_ok=180)    # 4 points on 200: neither proven
    q = {"t/acc": {"max_loss_abs": 0.05}}
    for on_inc, passed in (("reject", False), ("accept", True)):
        c = parse({**cfg(quality=q, variants=("a",)).raw,
                   "gate": {"quality": q, "statistics": {"on_inconclusive": on_inc}}})
        check = one_check(c, results)
        assert check["test"]["verdict"] == "inconclusive" and check["passed"] is passed
    c = parse({**cfg(quality=q, variants=("a",)).raw, "gate": {"quality": q, "statistics": {"enabled": False}}})
    check = one_check(c, results)                                     # point estimates: 4 points ≤ 5 points
    assert "test" not in check and check["passed"] and check["loss"] == pytest.approx(0.04)
    # the level and the power come from gate.statistics too
    c = parse({**cfg(quality=q, variants=("a",)).raw,
               "gate": {"quality": q, "statistics": {"alpha": 0.3, "power": 0.5}}})
    check = one_check(c, results)
    default = one_check(cfg(quality=q, variants=("a",)), results)
    assert check["test"]["ucb"] < default["test"]["ucb"] and check["test"]["mde"] < default["test"]["mde"]


def test_paired_test_reads_direction_from_lm_eval(tmp_path):
    results = paired_results(tmp_path, lost=100, up=False)            # lower is better: 10 points fewer is a gain
    check = one_check(cfg(quality={"t/acc": {"max_loss_abs": 0.02}}, variants=("a",)), results)
    assert check["test"]["verdict"] == "non-inferior" and check["loss"] == pytest.approx(-0.1)


def test_paired_path_needs_samples_on_both_sides_and_a_known_aggregate(tmp_path):
    import numpy as np

    from evalgate.gate import compare_samples
    from evalgate.results import VariantResults
    from evalgate.stats import paired_test

    results = paired_results(tmp_path, lost=100)
    (tmp_path / "a" / "samples_t.jsonl").unlink()
    check = one_check(cfg(quality={"t/acc": {"max_loss_abs": 0.02}}, variants=("a",)), results)
    assert "test" not in check and not check["passed"] and "→ 0.8 (loss 0.1 > 0.02)" in check["reason"]
    base_rows, var_rows = VariantResults(tmp_path / "baseline").samples("t"), VariantResults(tmp_path / "a").samples("t")
    assert var_rows is None
    assert compare_samples("lmeval/t/acc/none", 0.02, base_rows, var_rows, True, 0.05) is None
    assert compare_samples("lmeval/t/acc/none", 0.02, var_rows, base_rows, True, 0.05) is None
    same = compare_samples("lmeval/t/acc/none", 0.02, base_rows, base_rows, True, 0.05)
    assert same.n == 1000 and same.loss == 0 and same.verdict == "non-inferior"
    assert compare_samples("lmeval/t/acc/other_filter", 0.02, base_rows, base_rows, True, 0.05) is None
    two = np.ones((10, 2))
    assert paired_test(two, two, "unknown_aggregate", 0.1, True, 0.05) is None
    assert paired_test(two, two, "bits_per_byte", 0.1, False, 0.05).method == "paired bootstrap"
    assert paired_test(np.ones(10), np.zeros(10), "acc", 0.1, True, 0.05).method == "Newcombe paired score"
    assert paired_test(np.full(10, 0.5), np.full(10, 0.5), "f1", 0.1, True, 0.05).method == "paired bootstrap"
    # a metric with only 0/1 values is binary, whatever its name
    t = paired_test(np.array([1.0, 0.0] * 5), np.array([1.0, 0.0] * 5), "f1", 0.1, True, 0.05)
    assert t.method == "Newcombe paired score"


def test_sample_values_and_pairing():
    from evalgate.results import sample_values
    from evalgate.stats import pair

    rows = [{"doc_id": 2, "filter": "a", "m": 1}, {"doc_id": 1, "filter": "b", "m": 0},
            {"doc_id": 3, "m": 5}, {"doc_id": 4, "filter": "a", "other": 1}]
    assert sample_values(rows, "m", "a") == {2: 1, 3: 5}                # no filter field: counts for any
    assert sample_values(rows, "m", "b") == {1: 0, 3: 5}
    b, v = pair({3: 1.0, 1: 2.0, 7: 0.0}, {1: 5.0, 3: 6.0, 9: 0.0})
    assert b.tolist() == [2.0, 1.0] and v.tolist() == [5.0, 6.0]      # the common docs, in doc order
    assert pair({1: 1.0}, {2: 1.0}) is None


def test_load_result_without_status_or_metrics(tmp_path):
    import json

    from evalgate.results import VariantResults

    r = VariantResults(tmp_path).load()
    assert r["status"] == {"ok": False, "error": f"{tmp_path}/status.json missing: the variant did not run"}
    assert r["metrics"] == {} and r["higher_is_better"] == {} and r["dir"] == tmp_path
    (tmp_path / "lm_eval.json").write_text(json.dumps({"higher_is_better": {"t": {"acc": True, "ppl": False}}}))
    assert VariantResults(tmp_path).load()["higher_is_better"] == {"lmeval/t/acc": True, "lmeval/t/ppl": False}
    (tmp_path / "lm_eval.json").write_text("{}")
    assert VariantResults(tmp_path).load()["higher_is_better"] == {}


def test_direction_of_fidelity_and_unknown_metrics():
    from evalgate.gate import higher_is_better

    assert higher_is_better("fidelity/top1_agreement", {}) is True
    assert higher_is_better("fidelity/kl_mean", {}) is False
    assert higher_is_better("fidelity/gsm8k/answer_flip_rate", {}) is False
    assert higher_is_better("fidelity/something_new", {"fidelity/something_new": True}) is False
    assert higher_is_better("lmeval/t/ppl/none", {"lmeval/t/ppl": False}) is False
    assert higher_is_better("lmeval/t/new/none", {}) is True


# -- point estimates: the reasons, zero baselines ------------------------------------------------------------

def test_point_estimate_reasons_and_relative_loss():
    c = cfg(quality={"t/acc": {"max_loss_abs": 0.02, "max_loss_rel_pct": 5}})
    g = decide(c, {"baseline": res(0.9, 10), "a": res(0.8, 10), "b": res(0.89, 10)})
    (ca,) = g["variants"]["a"]["checks"]
    assert ca["reason"] == "lmeval/t/acc/none: 0.9 → 0.8 (loss 0.1 > 0.02; loss 11.1% > 5%)"
    assert ca["loss_rel_pct"] == pytest.approx(100 / 9) and ca["margin"] == pytest.approx(0.02)
    (cb,) = g["variants"]["b"]["checks"]
    assert cb["reason"] == "lmeval/t/acc/none: 0.9 → 0.89 (within limits)" and cb["passed"]
    assert g["variants"]["a"]["reason"] == ca["reason"]
    assert g["variants"]["b"]["reason"] == "all checks passed" and g["variants"]["baseline"]["reason"] == "reference"
    assert g["variants"]["baseline"]["checks"] == []                    # the reference is not compared with itself
    only_rel = decide(cfg(quality={"t/acc": {"max_loss_rel_pct": 5}}), {"baseline": res(0.9, 10), "a": res(0.8, 10)})
    assert only_rel["variants"]["a"]["checks"][0]["reason"].endswith("(loss 11.1% > 5%)")
    only_abs = decide(cfg(quality={"t/acc": {"max_loss_abs": 0.2}}), {"baseline": res(0.9, 10), "a": res(0.8, 10)})
    assert only_abs["variants"]["a"]["verdict"] == "accept"


def test_zero_baseline_relative_loss():
    c = cfg(quality={"t/acc": {"max_loss_abs": 0.5}})
    g = decide(c, {"baseline": res(0.0, 10), "a": res(0.0, 10), "b": res(-0.1, 10)})
    assert g["variants"]["a"]["checks"][0]["loss_rel_pct"] == 0.0
    assert g["variants"]["b"]["checks"][0]["loss_rel_pct"] == float("inf")


def test_missing_metric_reasons():
    r = res(0.9, 10)
    del r["metrics"]["lmeval/t/ppl/none"]
    g = decide(cfg(), {"baseline": res(0.9, 10), "a": r, "b": res(0.9, 10)})
    (miss,) = [c for c in g["variants"]["a"]["checks"] if not c["passed"]]
    assert miss == {"metric": "lmeval/t/ppl/none", "baseline": 10, "value": None, "max_loss_abs": None,
                    "max_loss_rel_pct": 10, "passed": False, "reason": "lmeval/t/ppl/none missing from variant results"}
    base = res(0.9, 10)
    del base["metrics"]["lmeval/t/acc/none"]
    g = decide(cfg(), {"baseline": base, "a": res(0.9, 10)})
    assert "lmeval/t/acc/none missing from baseline results" in g["variants"]["a"]["reason"]


# -- SLOs, failures, early rejection, the best variant -------------------------------------------------------

def test_slo_reasons_and_bounds():
    c = cfg(slo={"p99_ttft_ms": {"max": 50, "min": 10}, "output_throughput": {"min": 120}})
    g = decide(c, {"baseline": res(0.9, 10, thr=120, p99_ttft_ms=50), "a": res(0.9, 10, thr=150, p99_ttft_ms=5),
                   "b": res(0.9, 10, thr=119.5)})
    assert g["variants"]["baseline"]["verdict"] == "accept"            # the limits themselves pass
    (ttft,) = [x for x in g["variants"]["a"]["checks"] if x["metric"] == "p99_ttft_ms"]
    assert ttft == {"metric": "p99_ttft_ms", "value": 5, "max": 50, "min": 10, "passed": False,
                    "reason": "p99_ttft_ms = 5 (limit max 50 and min 10)"}
    reasons = [x["reason"] for x in g["variants"]["b"]["checks"] if x["metric"] in c.limits]
    assert reasons == ["p99_ttft_ms = None (limit max 50 and min 10)", "output_throughput = 119.5 (limit min 120)"]
    assert g["variants"]["b"]["reason"] == "; ".join(reasons)


def test_baseline_failure_reason_and_missing_baseline():
    g = decide(cfg(), {"baseline": res(0.9, 10, ok=False), "a": res(0.9, 10)})
    assert g["variants"]["a"] == {"verdict": "reject", "reason": "baseline 'baseline' failed: boom", "checks": []}
    g = decide(cfg(), {"a": res(0.9, 10)})
    assert g["variants"]["a"]["reason"] == "baseline 'baseline' failed: no results"
    assert g["variants"]["baseline"]["reason"] == "failed to run: no results: the variant did not run"
    assert g["baseline"] == "baseline" and g["statistics"] == {}


def test_early_rejection_is_a_rejection_with_its_check():
    early = {"reason": "stopped early at look 1 of 2", "check": {"metric": "m", "passed": False}, "look": 1}
    a = res(0.9, 10)
    a["status"]["early_rejection"] = early
    c = parse({**cfg().raw, "gate": {**cfg().raw["gate"], "statistics": {"alpha": 0.1}}})
    g = decide(c, {"baseline": res(0.9, 10), "a": a, "b": res(0.9, 10, thr=150)})
    assert g["variants"]["a"] == {"verdict": "reject", "reason": "stopped early at look 1 of 2",
                                  "checks": [{"metric": "m", "passed": False}],
                                  "early_rejection": {"reason": "stopped early at look 1 of 2", "look": 1}}
    assert g["statistics"] == {"alpha": 0.1} and g["best"] == "b"


def test_a_variant_whose_look_was_not_reproducible_carries_a_warning_and_keeps_its_verdict():
    """gate.sequential.on_unreproducible evaluate_on: the verdict is the checks' on the fresh evaluation;
    the docs that scored differently when asked again are named in a warning (and in the reason)."""
    g = decide(cfg(), {"baseline": res(0.9, 10), "a": res(0.9, 10, **{"sequential/unreproducible_docs": 21.0}),
                       "b": res(0.85, 10, **{"sequential/unreproducible_docs": 3.0})})
    a, b = g["variants"]["a"], g["variants"]["b"]
    assert a["verdict"] == "accept" and b["verdict"] == "reject"
    assert a["warnings"] == ["not reproducible: 21 docs scored differently when a look's docs were asked again "
                             "(results/<variant>/unreproducible.json); its quality is from a fresh evaluation"]
    assert a["reason"] == "all checks passed; warning: " + a["warnings"][0]
    assert b["reason"].startswith("lmeval/t/acc/none") and "warning: not reproducible: 3 docs" in b["reason"]
    assert "warnings" not in g["variants"]["baseline"]


def test_best_variant_ranking():
    results = {"baseline": res(0.9, 10, thr=100), "a": res(0.9, 10, thr=150), "b": res(0.9, 10, thr=120)}
    assert decide(cfg(), results)["best"] == "a"
    # the direction comes from the metric's name: a latency (`_ms`) ranks lower-is-better
    for n, ttft in (("baseline", 30.0), ("a", 10.0), ("b", 20.0)):
        results[n]["metrics"]["median_ttft_ms"] = ttft
    low = parse({**cfg().raw, "report": {"rank_by": "median_ttft_ms"}})
    assert decide(low, results)["best"] == "a"
    results["b"]["metrics"]["median_ttft_ms"] = 5.0
    assert decide(low, results)["best"] == "b"
    other = parse({**cfg().raw, "report": {"rank_by": "p99_ttft_ms"}})
    results["b"]["metrics"]["p99_ttft_ms"] = 3.0                       # only b has it
    assert decide(other, results)["best"] == "b"
    results["b"]["status"]["ok"] = False
    assert decide(other, results)["best"] is None


# -- conventions the mutation run asked about (docs/mutation.md) -------------------------------------------

def test_paired_test_defaults_seed_and_aggregate():
    import numpy as np

    from evalgate.stats import AGGREGATES, mde, paired_test

    rng = np.random.default_rng(8)
    b = rng.random(300)
    v = b + rng.normal(0, 0.1, 300)
    t = paired_test(b, v, "f1", 0.02, True, 0.05)
    assert t == paired_test(b, v, "f1", 0.02, True, 0.05, power=0.8, seed=0)
    t1 = paired_test(b, v, "f1", 0.02, True, 0.05, seed=1)
    assert t1 == paired_test(b, v, "f1", 0.02, True, 0.05, seed=1) and t1.lcb != t.lcb
    half = paired_test(b, v, "f1", 0.02, True, 0.05, power=0.5)
    assert half.mde == pytest.approx(t.mde * mde(1, 1, 0.05, 0.5) / mde(1, 1, 0.05, 0.8))
    ppl = np.c_[rng.normal(-10, 1, 200), np.full(200, 5.0)]
    worse = ppl - [0.5, 0]
    agg = paired_test(ppl, worse, "word_perplexity", 0.05, False, 0.05)
    fn = AGGREGATES["word_perplexity"]
    assert agg.loss == pytest.approx(float(fn(worse.T, -1) - fn(ppl.T, -1)))


def test_fidelity_direction_is_read_from_the_last_part_of_the_key():
    from evalgate.gate import higher_is_better

    assert higher_is_better("fidelity/sub/top1_agreement", {}) is True


def test_a_variant_without_its_directory_is_gated_on_point_estimates(tmp_path):
    results = paired_results(tmp_path, lost=30)
    del results["a"]["dir"]
    check = one_check(cfg(quality={"t/acc": {"max_loss_abs": 0.10}}, variants=("a",)), results)
    assert "test" not in check and check["passed"] and check["loss"] == pytest.approx(0.03)


def test_gate_passes_its_seed_and_power_to_the_test(tmp_path):
    import numpy as np

    from evalgate.results import VariantResults
    from evalgate.stats import paired_test

    rng = np.random.default_rng(9)
    b = rng.random(300)
    v = np.clip(b - 0.01 + rng.normal(0, 0.05, 300), 0, 1)
    results = {"baseline": VariantResults(write_samples(tmp_path / "baseline", list(b), metric="f1")).load(),
               "a": VariantResults(write_samples(tmp_path / "a", list(v), metric="f1")).load()}
    q = {"t/f1": {"max_loss_abs": 0.02}}
    c = parse({**cfg(quality=q, variants=("a",)).raw, "seed": 3, "gate": {"quality": q, "statistics": {"power": 0.5}}})
    (check,) = decide(c, results)["variants"]["a"]["checks"]
    want = paired_test(b, v, "f1", 0.02, True, 0.05, power=0.5, seed=3)      # JSON keeps every float exactly
    assert check["test"] == want.as_dict() and check["test"]["method"] == "paired bootstrap"


def test_every_threshold_is_checked_after_a_missing_one():
    r = res(0.9, 10)
    del r["metrics"]["lmeval/t/acc/none"]
    g = decide(cfg(), {"baseline": res(0.9, 10), "a": r, "b": res(0.9, 10)})
    assert [c["metric"] for c in g["variants"]["a"]["checks"]] == ["lmeval/t/acc/none", "lmeval/t/ppl/none"]


def test_zero_baseline_on_the_paired_path_has_no_relative_loss(tmp_path):
    results = paired_results(tmp_path, lost=0, n=100, base_ok=0)
    check = one_check(cfg(quality={"t/acc": {"max_loss_abs": 0.1}}, variants=("a",)), results)
    assert check["loss_rel_pct"] is None and "test" in check


def test_point_estimate_limits_are_inclusive():
    c = cfg(quality={"t/acc": {"max_loss_abs": 0.25, "max_loss_rel_pct": 50}})
    g = decide(c, {"baseline": res(0.5, 10), "a": res(0.25, 10)})
    (check,) = g["variants"]["a"]["checks"]
    assert check["loss"] == 0.25 and check["loss_rel_pct"] == 50 and check["passed"]


def test_slo_values_are_rounded_in_the_reason():
    c = cfg(slo={"output_throughput": {"min": 120}})
    g = decide(c, {"baseline": res(0.9, 10, thr=119.54321), "a": res(0.9, 10, thr=130), "b": res(0.9, 10)})
    assert g["variants"]["baseline"]["reason"] == "output_throughput = 119.5 (limit min 120)"


def test_a_failed_baseline_still_answers_for_every_variant():
    c = cfg(variants=("baseline", "a", "b", "c"))
    g = decide(c, {"baseline": res(0.9, 10, ok=False), "a": res(0.9, 10), "b": res(0.9, 10)})
    assert list(g["variants"]) == ["baseline", "a", "b", "c"]
    assert g["variants"]["b"]["reason"] == g["variants"]["a"]["reason"] == "baseline 'baseline' failed: boom"
