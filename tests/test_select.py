"""Best variant per load level: a win only beyond the run's noise (A/A floor, level intervals), else
"no difference"; speculation's break-even level."""
from evalgate.select import best_overall, lower_is_better, per_level, speculation, within_noise_of_best


def result(thr, lat, ci=1.0, goodput=None, **extra):
    m = {"output_throughput": thr, "peak_concurrency": 4.0, "c1/output_throughput": thr / 4, "c1/ci_pct": ci,
         "c4/output_throughput": thr, "c4/ci_pct": ci, "c1/median_e2el_per_token_ms": lat, **extra}
    if goodput is not None:
        m["request_goodput"] = goodput
    return {"status": {"ok": True}, "metrics": m}


def accept(*names):
    return {n: {"verdict": "accept"} for n in names}


def test_clear_winner_and_no_difference_inside_the_noise():
    results = {"baseline": result(1000, 5.0, **{"aa/output_throughput": 3.0, "aa/c1/median_e2el_per_token_ms": 2.0}),
               "a": result(1020, 4.0), "b": result(1300, 5.05)}
    sel = per_level(results, accept("baseline", "a", "b"))
    assert sel["throughput"]["best"] == "b"                          # +27 %: beyond any noise
    assert sel["latency"]["best"] == "a" and sel["latency"]["metric"] == "c1/median_e2el_per_token_ms"
    results["b"] = result(1025, 5.05)                                 # +0.5 % over a: inside the 3 % A/A floor
    sel = per_level(results, accept("baseline", "a", "b"))
    assert sel["throughput"]["best"] is None and sel["throughput"]["no_difference"] == ["b", "a", "baseline"]
    assert sel["c4"]["best"] is None                                  # the level interval (1 %) is the noise there
    results["a"] = result(1020, 4.0, ci=0.1)
    results["baseline"]["metrics"]["c4/ci_pct"] = 0.1
    results["b"] = result(1200, 5.0, ci=0.1)
    assert per_level(results, accept("baseline", "a", "b"))["c4"]["best"] == "b"


def test_only_accepted_and_profiled_variants_compete():
    results = {"baseline": result(1000, 5.0), "fast_but_rejected": result(5000, 1.0),
               "early_stopped": {"status": {"ok": True}, "metrics": {"lmeval/t/acc/none": 0.1}}}
    verdicts = {"baseline": {"verdict": "accept"}, "fast_but_rejected": {"verdict": "reject"},
                "early_stopped": {"verdict": "accept"}}
    sel = per_level(results, verdicts)
    assert sel["throughput"]["best"] == "baseline" and set(sel["throughput"]["values"]) == {"baseline"}


def test_goodput_category_with_an_slo_and_metric_directions():
    results = {"baseline": result(1000, 5.0, goodput=10.0), "a": result(900, 6.0, goodput=14.0)}
    sel = per_level(results, accept("baseline", "a"))
    assert sel["goodput"]["best"] == "a" and sel["throughput"]["best"] == "baseline"
    assert lower_is_better("median_ttft_ms") and not lower_is_better("request_goodput")


def test_speculation_stops_paying_where_it_is_no_faster():
    base = result(1000, 5.0)
    base["metrics"].update({"c1/output_throughput": 250.0, "c4/output_throughput": 1000.0})
    spec = result(1000, 3.0, identical_output_share=1.0)
    spec["metrics"].update({"c1/output_throughput": 400.0, "c4/output_throughput": 1005.0,
                            "c1/spec_decode_acceptance_rate": 60.0, "c1/spec_decode_acceptance_length": 2.4})
    out = speculation({"baseline": base, "ngram": spec}, ["ngram"])["ngram"]
    assert abs(out["levels"]["c1"]["speedup_pct"] - 60.0) < 1e-9 and out["levels"]["c1"]["acceptance_length"] == 2.4
    assert out["stops_paying_at"] == "c4" and out["identical_output_share"] == 1.0


def test_the_headline_best_names_who_it_does_not_beat_beyond_the_noise():
    """gate.json's `best` is the top on `report.rank_by`; `best_within_noise` lists the accepted variants
    inside the noise of it (A/A floor 3 %; here the peak level's interval is 1 %)."""
    results = {"baseline": result(1000, 5.0, **{"aa/output_throughput": 3.0}), "a": result(1020, 4.0),
               "b": result(1300, 5.05), "rejected": result(1310, 5.0)}
    verdicts = {**accept("baseline", "a", "b"), "rejected": {"verdict": "reject"}}
    assert best_overall(results, verdicts) == "b" and within_noise_of_best(results, verdicts, "b") == []
    results["b"] = result(1025, 5.05)          # +0.5 % over a, +2.5 % over the baseline: both inside 3 %
    assert within_noise_of_best(results, verdicts, "b") == ["baseline", "a"]
    results["baseline"]["metrics"]["aa/output_throughput"] = 1.0   # now only a (0.5 %) is inside the noise
    assert within_noise_of_best(results, verdicts, "b") == ["a"]
    lat = "c1/median_e2el_per_token_ms"        # lower is better: a's 4.0 against 5.0 is 20 % better
    assert best_overall(results, verdicts, lat) == "a" and within_noise_of_best(results, verdicts, "a", lat) == []
    assert within_noise_of_best(results, verdicts, None) == []
