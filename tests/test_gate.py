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
