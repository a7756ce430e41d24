"""The report's DVC views on fixed rows: the Pareto frontier per gated metric (direction-aware, not-profiled
variants kept but never on it), names of nearby points on different rows, one short row per variant."""
from evalgate.report import column_names, headline, quality_points

KEYS = ["lmeval/t/acc/none", "lmeval/t/ppl/none"]


def row(name, verdict, thr, acc, ppl):
    return {"variant": name, "verdict": verdict, "output_throughput": thr, "speedup_pct": None,
            KEYS[0]: acc, KEYS[1]: ppl}


TABLE = [row("baseline", "accept", 100, 0.90, 10.0), row("fast", "accept", 200, 0.85, 10.5),
         row("faster_worse", "reject", 300, 0.60, 30.0), row("dominated", "reject", 90, 0.80, 12.0),
         row("stopped", "reject", None, 0.95, 9.0)]


def test_frontier_per_metric_with_its_direction():
    points = quality_points(TABLE, KEYS, {KEYS[0]: True, KEYS[1]: False})
    front = {(p["metric"], p["variant"]) for p in points if p["frontier"]}
    assert front == {("t/acc", "baseline"), ("t/acc", "fast"), ("t/acc", "faster_worse"),
                     ("t/ppl", "baseline"), ("t/ppl", "fast"), ("t/ppl", "faster_worse")}
    stopped = [p for p in points if p["variant"] == "stopped"]
    assert len(stopped) == 2 and all(p["status"] == "rejected, not profiled" and p["peak_tok_s"] == 0.0
                                     and not p["frontier"] for p in stopped)   # best quality, but never profiled
    assert {p["status"] for p in points if p["variant"] == "faster_worse"} == {"rejected"}
    assert {p["higher_is_better"] for p in points if p["metric"] == "t/ppl"} == {False}


def test_names_of_points_close_together_get_different_rows():
    same = [row(f"v{i}", "reject", 100 + i, 0.5, 1.0) for i in range(4)] + [row("far", "reject", 900, 0.5, 1.0)]
    points = [p for p in quality_points(same, KEYS[:1], {}) if p["metric"] == "t/acc"]
    rows = {p["variant"]: p["label_row"] for p in points}
    assert len({rows[f"v{i}"] for i in range(4)}) == 4 and rows["far"] == 0
    assert all(p["label_value"] != p["value"] for p in points)


def test_headline_is_one_short_row_per_variant():
    assert column_names(KEYS + ["lmeval/u/acc/none", "lmeval/u/f1/none", "fidelity/kl_mean"]) == {
        KEYS[0]: "t/acc", KEYS[1]: "t/ppl", "lmeval/u/acc/none": "u/acc", "lmeval/u/f1/none": "u/f1",
        "fidelity/kl_mean": "fidelity/kl_mean"}
    assert column_names(["lmeval/t/acc/none", "lmeval/u/acc/strict"]) == {"lmeval/t/acc/none": "t",
                                                                         "lmeval/u/acc/strict": "u"}
    results = {"baseline": {"metrics": {"output_throughput": 100.0, "mem_peak_mb": 512.3456, KEYS[0]: 0.9}}}
    out = headline([{"variant": "baseline", "verdict": "accept", "speedup_pct": 0.0}], results, [KEYS[0]])
    assert out == {"baseline": {"accepted": 1, "peak_tok_s": 100.0, "speedup_pct": 0.0, "mem_mb": 512.35, "t": 0.9}}


def test_headline_names_the_variants_inside_the_noise_of_the_best():
    from evalgate.report import best_line

    assert best_line({"best": "batch4", "best_within_noise": []}, "output_throughput") == \
        "**Best accepted variant (by `output_throughput`): `batch4`**"
    assert best_line({"best": "batch4", "best_within_noise": ["baseline", "int8"]}, "output_throughput") == (
        "**Best accepted variant (by `output_throughput`): `batch4`**; no difference from `baseline`, `int8` "
        "within this run's noise")
    assert best_line({"best": None}, "output_throughput") == "**No variant was accepted.**"


def test_levels_the_host_disturbed_are_named_beside_the_noise_floor():
    """A level whose either baseline sweep lost ≥ 0.5 % of the host's CPU to the hypervisor is named (the
    H100 runs of 2026-11-26: the slow sweep of an A/A pair was the one with steal); quiet levels are not."""
    from evalgate.report import _host_steal

    results = {"baseline": {"metrics": {"c1/host_steal_pct": 2.36, "sweep_aa/c1/host_steal_pct": 0.02,
                                        "c16/host_steal_pct": 0.06, "sweep_aa/c16/host_steal_pct": 0.74,
                                        "c128/host_steal_pct": 0.05, "sweep_aa/c128/host_steal_pct": 0.01}}}
    text = "\n".join(_host_steal(results))
    assert "c1 (first 2.36 %, aa 0.02 %)" in text and "c16 (first 0.06 %, aa 0.74 %)" in text
    assert "c128" not in text
    quiet = {"baseline": {"metrics": {"c1/host_steal_pct": 0.1, "sweep_aa/c1/host_steal_pct": 0.2}}}
    assert _host_steal(quiet) == [] and _host_steal({}) == []


def test_a_verdicts_warnings_are_in_the_summary():
    """gate.json's `warnings` (faults.retry_unreproducible's second evaluation, on_unreproducible evaluate_on)
    reach the Verdicts section under the checks; an accept with one is not a plain accept."""
    from evalgate.report import _verdicts

    check = {"passed": True, "reason": "lmeval/t/acc/none: Δ=+0 … → non-inferior"}
    warning = "its first evaluation was not reproducible (32 docs scored differently …)"
    gate = {"variants": {"draft": {"verdict": "accept", "reason": f"all checks passed; warning: {warning}",
                                   "checks": [check], "warnings": [warning]},
                         "fp8": {"verdict": "accept", "reason": "all checks passed", "checks": [check]}}}
    table = [{"variant": "draft", "verdict": "accept", "warnings": [warning]}, {"variant": "fp8", "verdict": "accept"}]
    lines = _verdicts(table, gate)
    at = lines.index("- `draft`: **accept**")
    assert lines[at + 1:at + 3] == [f"  - ✅ {check['reason']}", f"  - ⚠ warning: {warning}"]
    assert not [x for x in lines[lines.index("- `fp8`: **accept**"):] if "⚠" in x]


def test_what_moved_between_the_baselines_sweeps_is_shown_per_level():
    """Per level: the A/A sweep's output tok/s against the first, beside the host's CPU loop time and the
    card's clock (signed changes); the copied `sweep_aa/…` keys are no level of their own."""
    from evalgate.report import _host_moves, levels_of

    m = {"c1/output_throughput": 400.0, "sweep_aa/c1/output_throughput": 300.0,
         "c1/cpu_probe_us": 1000.0, "sweep_aa/c1/cpu_probe_us": 1250.0,
         "c1/sm_clock_mhz": 1980.0, "sweep_aa/c1/sm_clock_mhz": 1980.0,
         "c16/output_throughput": 3000.0, "c16/cpu_probe_us": 900.0}   # c16: no second sweep
    results = {"baseline": {"metrics": m}}
    assert levels_of(results) == ["c1", "c16"]
    text = "\n".join(_host_moves(results))
    assert "| c1 | aa | 400 → 300 (-25.0 %) | 1000 µs → 1250 µs (+25.0 %) | 1980 MHz → 1980 MHz (+0.0 %) |" in text
    assert "| c16 |" not in text
    assert _host_moves({"baseline": {"metrics": {"c1/output_throughput": 1.0}}}) == []


def _square(data, path):   # module level: a pool's worker imports it by name
    path.write_text(str(data * data))


def _fails(data, path):
    raise ValueError(f"no picture of {data}")


def test_pictures_drawn_in_worker_processes_are_the_ones_drawn_inline(tmp_path):
    """evalgate.report.draw: each picture function gets its data and its path, in the pool's processes
    when there is one (evalgate repro: forked from its forkserver) and here otherwise; the same files
    either way, and a picture's error is raised to the caller in both."""
    from concurrent.futures import ProcessPoolExecutor

    import pytest

    from evalgate.report import draw, pareto_png

    points = quality_points(TABLE, KEYS, {KEYS[0]: True, KEYS[1]: False})
    jobs = [(pareto_png, points), (_square, 7)]
    inline, pooled = [tmp_path / "a.png", tmp_path / "a.txt"], [tmp_path / "b.png", tmp_path / "b.txt"]
    draw(jobs, inline)
    with ProcessPoolExecutor(2) as pool:
        draw(jobs, pooled, pool)
        with pytest.raises(ValueError, match="no picture of 3"):
            draw([(_fails, 3)], [tmp_path / "c"], pool)
    assert pooled[0].read_bytes() == inline[0].read_bytes() and pooled[0].stat().st_size > 1000
    assert pooled[1].read_text() == inline[1].read_text() == "49"
    with pytest.raises(ValueError, match="no picture of 3"):
        draw([(_fails, 3)], [tmp_path / "c"])


def test_the_noise_floor_says_whether_the_neighbours_were_held_during_the_sweeps():
    from evalgate.report import _noise

    gate = {"noise_floor_pct": {"output_throughput": 2.0, "median_tpot_ms": 3.0}}
    assert "first and last, the same idle neighbours held still;" in "\n".join(_noise(gate, True))
    assert "first and last, beside the same idle neighbours;" in "\n".join(_noise(gate, False))
