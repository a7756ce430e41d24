"""Profile maths: per-request metrics, vLLM bench results → our names, the workload."""
import pytest

from evalgate.profile import _request_metrics, from_bench
from evalgate.metrics import stat_keys


def test_request_metrics_definitions():
    m = _request_metrics([0.10, 0.12, 0.15, 0.19])
    assert m["ttft"] == 0.10 and m["e2el"] == 0.19 and m["output_tokens"] == 4
    assert m["tpot"] == pytest.approx((0.19 - 0.10) / 3)       # (E2EL − TTFT) / (n − 1)
    assert m["itl"] == pytest.approx([0.02, 0.03, 0.04])       # every gap


def test_stat_keys_use_vllm_names():
    s = stat_keys("ttft", [1.0, 2.0, 3.0, 4.0])
    assert set(s) == {"mean_ttft_ms", "std_ttft_ms", "median_ttft_ms", "p90_ttft_ms", "p99_ttft_ms"}
    assert s["median_ttft_ms"] == 2.5


def test_from_bench_headline_and_levels():
    res = {1: {"completed": 8, "output_throughput": 100.0, "p50_ttft_ms": 5.0, "mean_tpot_ms": 2.0, "date": "x"},
           32: {"completed": 8, "output_throughput": 900.0, "p50_ttft_ms": 9.0, "mean_tpot_ms": 3.0,
                "spec_decode_acceptance_rate": 40.0}}
    s = from_bench(res, headline=32)
    assert s["output_throughput"] == 900.0 and s["median_ttft_ms"] == 9.0 and s["concurrency"] == 32
    assert s["c1/output_throughput"] == 100.0 and s["c1/median_ttft_ms"] == 5.0
    assert s["spec_decode_acceptance_rate"] == 40.0 and "date" not in s


def test_requests_per_level_scale_with_concurrency():
    from evalgate.profile import distinct_prompts, requests_at
    wl = {"num_prompts": 64, "repeats": 1, "concurrency": [1, 32], "min_requests_per_slot": 20}
    assert [requests_at(wl, c) for c in (1, 32)] == [64, 640]
    assert distinct_prompts(wl) == 640           # no level repeats a prompt
    plain = {"num_prompts": 16, "repeats": 2, "concurrency": [1, 4]}
    assert [requests_at(plain, c) for c in (1, 4)] == [32, 32] and distinct_prompts(plain) == 16
