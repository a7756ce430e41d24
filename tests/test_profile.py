"""The load profile's arithmetic and control: per-request metrics, goodput, the adaptive level, the
sweep (saturation, rate levels), and the two engines' request paths turned into the same records."""
import json
import math
import time
from pathlib import Path

import pytest

from evalgate import profile as P
from evalgate.engines.base import Endpoint, Generation
from evalgate.engines.vllm import records_from_bench
from evalgate.metrics import stat_keys


def rec(start, ttft, itl, n=None, cap=100, ok=True):
    n = n if n is not None else len(itl) + 1
    return {"index": 0, "source": "t", "ok": ok, "prompt_tokens": 5, "output_tokens": n, "start": start,
            "ttft": ttft, "itl": list(itl), "e2el": ttft + sum(itl), "capped": n >= cap}


def test_tpot_and_goodput_hand_worked():
    """Four requests, SLO ttft ≤ 100 ms and tpot ≤ 20 ms, over 2 s:
    a: ttft 50, 3 tokens in 0.05+0.02+0.02 → tpot (90−50)/2 = 20 ms → good (bound inclusive)
    b: ttft 150 → bad;  c: one token → tpot 0 (vLLM's rule) → good;  d: tpot 30 ms → bad.  Goodput 2/2 s = 1."""
    a = rec(0.0, 0.05, [0.02, 0.02])
    b = rec(0.1, 0.15, [0.01])
    c = rec(0.2, 0.08, [])
    d = rec(0.3, 0.04, [0.03, 0.03])
    assert P.tpot(a) == pytest.approx(0.02) and P.tpot(c) == 0.0 and P.tpot(d) == pytest.approx(0.03)
    slo = {"ttft_ms": 100, "tpot_ms": 20}
    assert [P.is_good(r, slo) for r in (a, b, c, d)] == [True, False, True, False]
    assert P.goodput([a, b, c, d], slo, 2.0) == pytest.approx(1.0)
    assert P.goodput([a], {}, 2.0) is None
    assert P.goodput([a, b], {"e2el_ms": 100}, 1.0) == pytest.approx(1.0)   # a: 90 ms, b: 160 ms


def test_summary_uses_what_requests_produced():
    recs = [rec(0.0, 0.1, [0.01] * 9, cap=10), rec(0.0, 0.1, [0.01] * 3, cap=10), rec(0, 0, [], ok=False)]
    s = P.summarize(recs, 2.0, {})
    assert s["completed"] == 2 and s["failed"] == 1
    assert s["output_throughput"] == pytest.approx(14 / 2.0)
    assert s["mean_output_tokens"] == 7 and s["stopped_before_cap"] == 0.5
    assert s["median_e2el_per_token_ms"] == pytest.approx(1000 * ((0.19 / 10) + (0.13 / 4)) / 2)
    assert "request_goodput" not in s


def test_stat_keys_use_vllm_names():
    s = stat_keys("ttft", [1.0, 2.0, 3.0, 4.0])
    assert set(s) == {"mean_ttft_ms", "std_ttft_ms", "median_ttft_ms", "p90_ttft_ms", "p99_ttft_ms"}
    assert s["median_ttft_ms"] == 2.5


def test_ci_pct_and_steady_bins():
    assert P.ci_pct([10.0]) == math.inf
    assert P.ci_pct([10.0, 10.0, 10.0]) == 0.0
    assert P.ci_pct([9.0, 11.0]) == pytest.approx(100 * 12.71 * 1.4142 / math.sqrt(2) / 10, rel=1e-3)
    # a steady stream: 4 requests in flight, each 10 tokens 0.1 s apart, staggered: constant throughput
    recs = [rec(0.25 * i, 0.1, [0.1] * 9) for i in range(40)]
    bins = P.steady_bins(recs, 4)
    assert len(bins) == P.BINS and P.ci_pct(bins) < 5


class FakeEndpoint(Endpoint):
    """Requests of `tokens` tokens at a fixed speed; throughput per level grows up to `saturate_at`."""
    supports_rate = True

    def __init__(self, tokens=40, step=0.001, saturate_at=4, jitter=0.0):
        self.tokens, self.step, self.sat, self.jitter, self.calls = tokens, step, saturate_at, jitter, []

    def lm_eval_model(self):
        raise NotImplementedError

    def reset_cache(self):
        self.calls.append("reset")

    def run_requests(self, requests, concurrency, rate=None, burstiness=1.0, ignore_eos=False, warmup=0):
        self.calls.append({"n": len(requests), "concurrency": concurrency, "rate": rate, "warmup": warmup})
        c = concurrency or 4
        eff = min(c, self.sat)
        step = self.step * c / eff            # beyond saturation each request slows down
        recs, t = [], 0.0
        for i, r in enumerate(requests):
            start = (i // c + (i % c) / c) * step * self.tokens   # a closed loop: slots free up in turn
            j = self.jitter * ((i * 7919) % 13 - 6) / 6
            recs.append({**rec(start, step * (1 + j), [step] * (self.tokens - 1), cap=r["max_tokens"]),
                         "index": r["index"], "text": f"out{r['index']}"})
            t = max(t, start + step * self.tokens)
        return recs, t, {}


REQS = [{"index": i, "prompt": f"p{i}", "max_tokens": 16, "stop": [], "source": "t"} for i in range(400)]
LOAD = {"concurrency": [1, 2, 4, 8, 16], "saturation_gain_pct": 5, "rates": [0.5],
        "requests": {"min": 8, "max": 200}, "duration_s": {"min": 0, "max": 60}, "target_ci_pct": 2, "waves": 4}


def test_level_stops_when_precise_and_at_the_cap():
    ep = FakeEndpoint()
    lvl = P.run_level(ep, REQS, LOAD, {}, False, concurrency=2)
    assert lvl["summary"]["rounds"] == 1 and lvl["summary"]["completed"] == 8   # steady: one round is enough
    assert lvl["summary"]["ci_pct"] <= 2
    noisy = FakeEndpoint(jitter=0.9)
    lvl = P.run_level(noisy, REQS, {**LOAD, "target_ci_pct": 0.01}, {}, False, concurrency=1)
    assert lvl["summary"]["completed"] == 200 and lvl["summary"]["ci_pct"] > 0.01   # capped by requests.max
    indexes = [r["index"] for r in lvl["requests"]]
    assert indexes == list(range(200))   # consecutive slices: no prompt repeats inside a level


def test_sweep_climbs_to_saturation_then_rates_at_the_baseline_peak():
    ep = FakeEndpoint(saturate_at=4)
    res = P.sweep(ep, REQS, LOAD, {"e2el_ms": 1000}, False)
    names = [lv["name"] for lv in res["levels"]]
    assert names == ["c1", "c2", "c4", "c8", "r0.5x"]        # c8 no longer grows: c16 never runs
    assert res["levels"][3]["summary"]["saturated"] == 1.0
    peak_rps = max(lv["summary"]["request_throughput"] for lv in res["levels"] if lv["concurrency"])
    assert ep.calls[-1]["rate"] == pytest.approx(0.5 * peak_rps)
    # each level starts from an empty prefix cache: a reset before its first round, none between rounds
    starts = [i for i, c in enumerate(ep.calls) if c == "reset"]
    assert len(starts) == len(names) and all(ep.calls[i + 1] != "reset" for i in starts)
    levels_of = [c["concurrency"] or c["rate"] for i, c in enumerate(ep.calls) if c != "reset" and ep.calls[i - 1] == "reset"]
    assert len(set(levels_of)) == len(names)
    s = res["summary"]
    assert s["output_throughput"] == max(lv["summary"]["output_throughput"] for lv in res["levels"][:4])
    assert s["median_ttft_ms"] == res["levels"][0]["summary"]["median_ttft_ms"]      # latency at c1
    assert "c4/output_throughput" in s and "r0.5x/request_goodput" in s and s["request_goodput"] > 0
    # a variant meets the baseline's arrival rate, not its own
    ep2 = FakeEndpoint(saturate_at=16)
    P.sweep(ep2, REQS, LOAD, {}, False, base_peak_rps=3.0)
    assert ep2.calls[-1]["rate"] == pytest.approx(1.5)
    # texts are kept at concurrency 1 only (the identical-output check)
    assert "text" in res["levels"][0]["requests"][0] and "text" not in res["levels"][1]["requests"][0]


def test_warmup_before_the_first_level_or_a_wave_before_every_level():
    """`warmup` warms the first level only; `warmup_each_level` sends at least one wave at each level's
    concurrency before it (its first round only; rate levels have no concurrency to fill)."""
    def warmups(load):
        ep = FakeEndpoint(saturate_at=16)
        P.sweep(ep, REQS, load, {}, False)
        return [(c["concurrency"] or f"r{c['rate']:.2f}", c["warmup"]) for c in ep.calls if c != "reset"]

    plain = warmups({**LOAD, "warmup": 3})
    assert [w for _, w in plain] == [3] + [0] * (len(plain) - 1)
    each = warmups({**LOAD, "warmup": 3, "warmup_each_level": True})
    firsts = {}
    for level, w in each:
        firsts.setdefault(level, w)
        if firsts[level] != w:
            assert w == 0   # later rounds of a level: no warm-up
    assert {k: v for k, v in firsts.items() if isinstance(k, int)} == {1: 3, 2: 3, 4: 4, 8: 8, 16: 16}
    assert all(v == 0 for k, v in firsts.items() if isinstance(k, str))


def test_no_rate_levels_without_a_load_generator():
    ep = FakeEndpoint()
    ep.supports_rate = False
    res = P.sweep(ep, REQS, LOAD, {}, False)
    assert all(lv["concurrency"] for lv in res["levels"])


class BatchEndpoint(Endpoint):
    """The generic closed loop: rows end at their own length (EOS), the batch at its longest row."""
    def __init__(self, batch_size):
        self.batch_size, self.batches = batch_size, []

    def lm_eval_model(self):
        raise NotImplementedError

    def generate_batch(self, requests, ignore_eos=False):
        self.batches.append(len(requests))
        lens = [r["max_tokens"] if ignore_eos else r["answer_len"] for r in requests]
        return [Generation(token_times=[0.001 * (k + 1) for k in range(n)], prompt_tokens=3, text="x" * n)
                for n in lens]


def test_generic_loop_respects_eos_and_batches():
    reqs = [{"index": i, "prompt": "p", "max_tokens": 10, "answer_len": 2 + i % 3, "stop": []} for i in range(8)]
    ep = BatchEndpoint(batch_size=2)
    recs, dur, _ = ep.run_requests(reqs, concurrency=4)
    assert ep.batches == [2, 2, 2, 2]
    assert [r["output_tokens"] for r in recs] == [2, 3, 4, 2, 3, 4, 2, 3]   # a request can end before max_tokens
    assert not any(r["capped"] for r in recs)
    assert recs[2]["start"] == recs[0]["start"] and recs[2]["ttft"] > recs[0]["ttft"]  # waited for the first batch
    forced, _, _ = ep.run_requests(reqs[:2], concurrency=2, ignore_eos=True)
    assert all(r["output_tokens"] == 10 and r["capped"] for r in forced)
    with pytest.raises(ValueError, match="request-rate"):
        ep.run_requests(reqs, concurrency=None, rate=2.0)


def test_vllm_bench_result_to_records():
    result = {"start_times": [100.0, 100.5], "ttfts": [0.02, 0.03], "itls": [[0.01, 0.01], []],
              "output_lens": [3, 0], "input_lens": [7, 9], "errors": ["", "boom"], "generated_texts": ["a b", ""]}
    reqs = [{"index": 4, "source": "fx", "max_tokens": 3}, {"index": 5, "source": "fx", "max_tokens": 8}]
    a, b = records_from_bench(result, reqs)
    assert a["start"] == 0.0 and a["e2el"] == pytest.approx(0.04) and a["capped"] and a["ok"]
    assert b["start"] == 0.5 and not b["ok"] and b["error"] == "boom" and b["output_tokens"] == 0


def test_workload_rows_to_vllm_bench_inputs():
    from evalgate.engines.vllm import bench_kwargs, bench_requests

    rows = [{"prompt": "12+3=", "max_tokens": 64, "stop": ["\n"]}, {"prompt": "abc", "max_tokens": 8, "stop": []}]
    specs = bench_requests(rows, len, first_id=10)
    assert specs == [{"prompt": "12+3=", "prompt_len": 5, "expected_output_len": 64, "request_id": "eg-11",
                      "request_overrides": {"stop": ["\n"]}},
                     {"prompt": "abc", "prompt_len": 3, "expected_output_len": 8, "request_id": "eg-12",
                      "request_overrides": None}]
    closed = bench_kwargs("http://h:1", 32, None, 1.0, False, 4)
    assert closed["max_concurrency"] == 32 and closed["request_rate"] == math.inf and closed["num_warmups"] == 4
    assert closed["extra_body"] == {"temperature": 0.0} and closed["ignore_eos"] is False   # greedy, EOS respected
    assert closed["api_url"] == "http://h:1/v1/completions"
    open_loop = bench_kwargs("http://h:1", None, 12.5, 0.5, True, 0)
    assert open_loop["max_concurrency"] is None and open_loop["request_rate"] == 12.5 and open_loop["burstiness"] == 0.5
    assert open_loop["ignore_eos"] is True


def test_aa_sweep_meets_the_first_sweeps_arrival_rates(tmp_path, monkeypatch):
    """The baseline's second (A/A) sweep runs its rate levels at the first sweep's peak, not its own."""
    from collections import namedtuple
    from types import SimpleNamespace

    from evalgate import profile, runner
    from evalgate.results import VariantResults

    # the host's CPU times as a clock that always moves (a fake level can end inside one real clock tick)
    ticks = iter(range(1, 10**6))
    T = namedtuple("T", "user system idle iowait steal")
    monkeypatch.setattr(profile, "_host_cpu", lambda: (lambda t: T(t, 0, t, 0, t))(next(ticks)))

    wl = tmp_path / "workload.jsonl"
    wl.write_text("".join(json.dumps(r) + "\n" for r in REQS))
    cfg = SimpleNamespace(load=LOAD, slo={}, workload={})
    (tmp_path / "baseline").mkdir()
    job = SimpleNamespace(cfg=cfg, workload=wl, out=VariantResults(tmp_path / "baseline"), baseline=None, tracker=None,
                          variant=SimpleNamespace(name="baseline"))
    fast, slower = FakeEndpoint(saturate_at=4), FakeEndpoint(saturate_at=2)   # the A/A finds a lower peak
    for ep in (fast, slower):
        ep.stats = dict
    logged = []
    job.tracker = SimpleNamespace(metrics=lambda m, step=None: logged.append(m), phase=lambda name: None)
    peak = runner.profile(job, fast)["summary"]["request_throughput"]
    runner.profile(job, slower, "aa")
    assert slower.calls[-1]["rate"] == pytest.approx(0.5 * peak)
    assert job.out.profile("aa") is not None
    # the A/A sweep's own values go to MLflow apart from `aa/…`, which finish() fills with the difference in %
    keys = {k for m in logged for k in m}
    assert "sweep_aa/c1/output_throughput" in keys and not any(k.startswith("aa/") for k in keys)
    # finish(): the difference in % per metric, and the A/A sweep's host steal per level (the report's note)
    job.tracker = None
    metrics = runner.finish(job, {})
    assert "aa/c1/output_throughput" in metrics
    assert "c1/host_steal_pct" in metrics and "sweep_aa/c1/host_steal_pct" in metrics


def test_gpu_verdict_reads_where_the_time_outside_the_scheduler_goes(capsys):
    """bench/gpu_verdict.py: `evalgate repro`'s step marks → seconds per step (the figures of
    docs/results/h100-2026-11-26-9, read by hand there, from the `-10` log)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_verdict", Path(__file__).parents[1] / "bench" / "gpu_verdict.py")
    gv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gv)
    log = ["repro: 1/5 inputs up to date [+3.9 s]\n", "Stage 'x' didn't change\n",
           "repro: 2/5 stale: baseline, run@fp8 [+3.9 s]\n", "repro: 3/5 running 7 variant(s) side by side [+5.2 s]\n",
           "repro: 4/5 gate and report [+247.4 s]\n", "repro: 5/5 dvc commit baseline gate report [+250.3 s]\n",
           "repro: done in 259.0 s\n"]
    steps = gv.repro_steps(log)
    assert [s["seconds"] for s in steps] == [3.9, 0.0, 1.3, 242.2, 2.9, 8.7]
    assert steps[1]["step"] == "1/5 inputs up to date" and steps[-1]["at_s"] == 250.3
    # with the process's own start (`0/5 up`) and its wall time: the interpreter's start and exit
    steps = gv.repro_steps(["repro: 0/5 up (this process started 0.8 s ago)\n", *log], wall_s=261.9)
    assert steps[0]["seconds"] == 0.8 and steps[-1]["step"].startswith("after `done`")
    assert steps[-1]["seconds"] == 2.1   # 261.9 - 0.8 - 259.0
    # the inputs' span, as the lines came: from the `1/5 inputs (…)` line to the `2/5` line
    seen = [(100.0, "repro: 1/5 inputs (fixture, workload, gguf, quantize) [+2.4 s]\n"),
            (180.0, "repro: warm-up beside the inputs: model info … (done at +82.4 s)\n"),
            (352.5, "repro: 2/5 stale: baseline [+254.9 s]\n"), (400.0, "repro: 3/5 running …\n")]
    assert gv.inputs_span(seen) == 252.5 and gv.inputs_span([(1.0, "repro: 1/5 inputs up to date [+2 s]\n")]) == 0.0
    # servers started before the inputs were done (evalgate.repro.Early), as its line reads
    import time

    from evalgate import repro

    early = repro.Early(None, None, None, [], time.time() - 203.4)
    early.say("schedule: started baseline, fp8, kv_fp8 ahead, beside the inputs")   # start_ahead's line
    line = capsys.readouterr().out
    got = gv.started_ahead(log[:2] + [line])
    assert got["variants"] == ["baseline", "fp8", "kv_fp8"] and abs(got["at_s"] - 203.4) < 1.0
    assert gv.started_ahead(log) is None


def _repro_ab():
    """bench/repro_ab.py as a module, with bench/ on the path for its `from common import …` meanwhile (as
    when it runs as a script)."""
    import importlib.util
    import sys

    bench = Path(__file__).parents[1] / "bench"
    sys.path.insert(0, str(bench))
    try:
        spec = importlib.util.spec_from_file_location("repro_ab", bench / "repro_ab.py")
        ab = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(ab)
    finally:
        sys.path.remove(str(bench))
    return ab


def test_repro_ab_splits_a_run_at_its_marks():
    """bench/repro_ab.py: a run's wall time split into the inputs, the variants and the rest, from the step
    marks of docs/results/cpu-2026-11-27-4's `after` run."""
    ab = _repro_ab()
    log = ("repro: 1/5 inputs (fixture, workload, gguf, quantize) [+1.3 s]\n"
           "repro: 2/5 stale: baseline, run@int8 [+142.2 s]\n"
           "repro: 3/5 run@int8 done in 22.5 s (exit 0): run int8: 377.3 tok/s peak [+182.3 s]\n"
           "repro: 4/5 gate and report (while the servers stop) [+234.7 s]\n"
           "repro: 5/5 dvc commit baseline run@int8 gate report [+242.2 s]\n"
           "repro: done in 243.9 s\n")
    assert ab.spans(log) == {"inputs_s": 142.2, "variants_s": 92.5, "after_s": 9.2, "repro_s": 243.9}
    with pytest.raises(SystemExit, match="no 2/5"):
        ab.spans("repro: 1/5 inputs [+1.0 s]\nTraceback …\n")


def test_repro_ab_runs_each_revision_as_it_was_when_it_started(tmp_path, monkeypatch):
    """bench/repro_ab.py takes half an hour and more: a commit made meanwhile must not turn the later runs of
    "HEAD" into another revision (it did on 2026-11-28: HEAD was 49c5745, then 7ad180b)."""
    import subprocess
    import sys

    ab = _repro_ab()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    for msg in ("a", "b"):
        subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", msg], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    got = []

    def one(rev, keep, commit=None):
        got.append((rev, commit))
        subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "meanwhile"], check=True)   # HEAD moves
        return {"rev": rev, "commit": commit[:7], "fresh_s": 1.0, "inputs_s": 0.5, "train_s": 0.4, "variants_s": 0.4,
                "after_s": 0.1, "verdicts": {}, "best": None, "quality": {}, "marks": True}

    monkeypatch.setattr(ab, "ROOT", tmp_path)
    monkeypatch.setattr(ab, "one", one)
    monkeypatch.setattr(sys, "argv", ["repro_ab.py", "HEAD~1", "HEAD", "--rounds", "2"])
    assert ab.main() == 0
    assert [c for r, c in got if r == "HEAD"] == [head, head]
    assert len({c for r, c in got if r == "HEAD~1"}) == 1


def test_repro_ab_runs_a_revision_from_before_evalgate_repro_as_dvc_repro(tmp_path, monkeypatch, capsys):
    """Issue 11's CPU reference (266.4 s, 08824e3) predates `evalgate repro`: such a revision runs `dvc repro`
    and counts by its wall time and verdicts; its quality figures are its own fixture's, checked only against
    its own other runs. A revision with the marks still has to match the other one's quality exactly."""
    import json
    import subprocess
    import sys

    ab = _repro_ab()
    ran = []

    def clone(keep, prefix, rev):
        work = tmp_path / f"{rev}-{len(ran)}"
        for d in ("reports", "fixtures", "results/baseline", "evalgate"):
            (work / d).mkdir(parents=True)
        if rev == "new":
            (work / "evalgate/repro.py").write_text("")
        (work / "reports/gate.json").write_text(json.dumps({"variants": {"baseline": {"verdict": "accept"}},
                                                            "best": "baseline"}))
        (work / "fixtures/metrics.json").write_text("{}")
        (work / "results/baseline/metrics.json").write_text(json.dumps({"lmeval/acc": 0.5 if rev == "old" else 0.7}))
        return work, {}

    def run(cmd, cwd=None, **kw):
        if cmd[0] == "git":
            return subprocess.CompletedProcess(cmd, 0, "abc1234\n", "")
        ran.append(cmd)
        time.sleep(0.06)   # a wall time to divide by
        marks = "repro: 2/5 variants [+3.0 s]\nrepro: 4/5 gate [+9.0 s]\nrepro: done in 10.0 s\n"
        out = "" if cmd[:2] == ["dvc", "repro"] else marks
        return subprocess.CompletedProcess(cmd, 0, out, "")

    monkeypatch.setattr(ab, "fresh_clone", clone)
    monkeypatch.setattr(ab.subprocess, "run", run)
    monkeypatch.setattr(ab, "pin", lambda rev: rev)
    monkeypatch.setattr(sys, "argv", ["repro_ab.py", "old", "new", "--rounds", "2"])
    assert ab.main() == 0
    assert [c[-2:] for c in ran] == [["dvc", "repro"], ["evalgate", "repro"], ["evalgate", "repro"], ["dvc", "repro"]]
    summary = json.loads(capsys.readouterr().out.split("\n", 4)[-1])
    assert summary["old"]["inputs_s"] is None and summary["new"]["inputs_s"] == 3.0
    assert not summary["same_quality"] and summary["same_quality_per_rev"]
    assert "variants_b_over_a_per_pair" not in summary and len(summary["fresh_b_over_a_per_pair"]) == 2

    def clone_moved(keep, prefix, rev):   # two revisions with the marks, the second's quality moved
        work, env = clone(keep, prefix, "new")
        if rev == "moved":
            (work / "results/baseline/metrics.json").write_text(json.dumps({"lmeval/acc": 0.6}))
        return work, env

    monkeypatch.setattr(ab, "fresh_clone", clone_moved)
    monkeypatch.setattr(sys, "argv", ["repro_ab.py", "new", "moved", "--rounds", "1"])
    assert ab.main() == 1


def test_failed_requests_are_said_out_loud(tmp_path, capsys):
    """A level whose requests failed measured less load than meant: the run prints how many and the first
    error (llama-server's dropped keep-alive connections were only a `c4/failed` metric before)."""
    from types import SimpleNamespace

    from evalgate import runner
    from evalgate.results import VariantResults

    class Flaky(FakeEndpoint):
        def run_requests(self, requests, *a, **k):
            recs, t, extra = super().run_requests(requests, *a, **k)
            recs[1] = {**recs[1], "ok": False, "error": "ClientOSError: Can not write request body"}
            return recs, t, extra

    wl = tmp_path / "workload.jsonl"
    wl.write_text("".join(json.dumps(r) + "\n" for r in REQS))
    (tmp_path / "v").mkdir()
    job = SimpleNamespace(cfg=SimpleNamespace(load={**LOAD, "concurrency": [2], "rates": []}, slo={}, workload={}),
                          workload=wl, out=VariantResults(tmp_path / "v"), baseline=None, tracker=None,
                          variant=SimpleNamespace(name="v"))
    ep = Flaky()
    ep.stats = dict
    res = runner.profile(job, ep)
    lv = res["levels"][0]
    failed, n = lv["summary"]["failed"], len(lv["requests"])
    assert failed == lv["summary"]["rounds"] >= 1     # one per round
    out = capsys.readouterr().out
    assert f"run v: c2: {failed} of {n} requests failed; the first: ClientOSError: Can not write request body" in out
    ok = FakeEndpoint()
    ok.stats = dict
    runner.profile(job, ok)
    assert "failed" not in capsys.readouterr().out


def test_host_share_is_busy_and_stolen_cpu_over_all_cores():
    """A level's host CPU: (busy, steal) as a share of every core's time, from two psutil.cpu_times()."""
    from collections import namedtuple

    from evalgate.profile import _host_share

    T = namedtuple("T", "user system idle iowait steal")
    a, b = T(100, 50, 800, 10, 5), T(130, 60, 850, 10, 15)   # 100 core-seconds: 50 busy (10 of them stolen), 50 idle
    out = _host_share(a, b)
    assert out == {"host_cpu_pct": 50.0, "host_steal_pct": 10.0}
    assert _host_share(a, a) == {}


def test_no_driver_polling_while_a_sweep_runs(monkeypatch):
    """The servers' GPU memory samplers poll NVML every 0.5 s, but not while a load sweep runs in this
    process (bench/aa_noise.py: what their polling did to a profile); the peak is read after it."""
    import sys
    import threading
    import time
    import types

    from evalgate.engines.vllm import GpuMemorySampler

    polls = []

    class Proc:
        pid, usedGpuMemory = 0, 512 * 2**20

    fake = types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlDeviceGetCount=lambda: 1, nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetComputeRunningProcesses=lambda h: polls.append(time.monotonic()) or [Proc()])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr("os.getpgid", lambda pid: 42)
    sampler = GpuMemorySampler(42)
    sampler.start()
    during = []

    class Slow(FakeEndpoint):
        def run_requests(self, *a, **k):
            n = len(polls)
            time.sleep(0.7)                     # longer than the sampler's period
            during.append(len(polls) - n)
            return super().run_requests(*a, **k)

    try:
        deadline = time.monotonic() + 5
        while not polls and time.monotonic() < deadline:   # it polls when nothing is profiled
            time.sleep(0.01)
        assert polls and not P.SWEEPING.is_set()
        P.sweep(Slow(), REQS, {**LOAD, "concurrency": [1, 2], "rates": []}, {}, False)
        assert during and during == [0] * len(during)      # not once during the sweep's levels
        assert not P.SWEEPING.is_set() and threading.active_count() >= 2
    finally:
        sampler.stop()
    assert sampler.peak_mb == 512


def test_a_level_records_the_hosts_cpu_speed_and_the_cards_mean_clock():
    """Each level keeps the host's CPU speed (the faster of a probe before and after it) and, where the
    engine reads one after each round, the card's mean SM clock: the report sets them beside the A/A."""
    class Clocked(FakeEndpoint):
        clocks = iter([1980.0, 1500.0, 1200.0])

        def run_requests(self, *a, **k):
            recs, t, _ = super().run_requests(*a, **k)
            return recs, t, {"sm_clock_mhz": next(self.clocks)}

    probes = iter([900.0, 700.0])
    lvl = P.run_level(Clocked(jitter=0.9), REQS, {**LOAD, "requests": {"min": 8, "max": 16}, "target_ci_pct": 0.01},
                      {}, False, concurrency=1, probe=lambda: next(probes))
    s = lvl["summary"]
    assert s["rounds"] == 2 and s["sm_clock_mhz"] == pytest.approx(1740.0)   # the two rounds' reads, not the third
    assert s["cpu_probe_us"] == 700.0
    plain = P.run_level(FakeEndpoint(), REQS, LOAD, {}, False, concurrency=2)["summary"]
    assert "sm_clock_mhz" not in plain and 0 < plain["cpu_probe_us"] < 1e6   # the real probe, in µs

