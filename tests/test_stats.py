"""Gate statistics: the paired non-inferiority test checked against published intervals, its error rates
shown by simulation under several seeds with binomial margins, and the gate's use of lm-eval per-sample logs.

The simulations (marker `simulation`) assert each stated rate through a one-sided 99 % Clopper–Pearson bound
of the observed rate, for every seed and for all seeds pooled:
  a rate that must stay under a bound (false accepts ≤ α, wrong stops ≤ α): the 99 % *lower* bound of the
    observed rate must not exceed it, so the test fails only when the simulation shows, with 99 %
    confidence, that the bound is broken (at a true rate equal to the bound that happens for ≤ 1 % of seeds,
    below it far more rarely);
  a rate that must reach a level (power, acceptance of a lossless variant): the 99 % lower bound must reach
    it, so the simulation shows the level is met.
`EVALGATE_SIM_SEEDS=5,6,7 pytest -m simulation` reruns them under other seeds (docs/mutation.md: the sweep)."""
import json
import math
import os
from collections import Counter

import numpy as np
import pytest
from scipy.stats import beta, binom, norm

from evalgate import stats
from evalgate.config import Threshold, parse
from evalgate.gate import decide, margin
from evalgate.stats import AGGREGATES, newcombe_paired, noninferiority, paired_bootstrap

N, P_BASE, MARGIN = 400, 0.9, 0.02
SEEDS = tuple(int(s) for s in os.environ.get("EVALGATE_SIM_SEEDS", "1,2,3,4").split(","))
CONF = 0.99
ABS = Threshold("t/acc", MARGIN, None)                      # δ = 0.02
REL = Threshold("t/acc", 0.05, 100 * MARGIN / P_BASE)      # δ = min(0.05, 2.22 % of 0.9) = 0.02: relative binds
MARGINS = [(ABS, P_BASE), (REL, P_BASE)]                   # both δ = MARGIN, planted as such (not via gate.margin)
Z95 = norm.ppf(0.975)                                      # one-sided α = 0.025 ↔ two-sided 95 %


def planted(rng, loss, noise=0.02, n=N, p=P_BASE):
    """Baseline 0/1 outcomes and a variant whose expected loss is `loss`, plus symmetric flip noise."""
    base = rng.random(n) < p
    var = base.copy()
    var[base & (rng.random(n) < (loss + noise / 2) / p)] = False
    var[~base & (rng.random(n) < (noise / 2) / (1 - p))] = True
    return base, var


def table(e, f, g, h):
    """Paired 0/1 outcomes from Newcombe's cells: e both succeed, f only the first (base), g only the second
    (variant), h neither; mean(base) − mean(var) = (f − g) / n."""
    return (np.array([1] * (e + f) + [0] * (g + h), bool), np.array([1] * e + [0] * f + [1] * g + [0] * h, bool))


# -- binomial margins for the simulations ------------------------------------------------------------------

def cp_lower(k, n, conf=CONF):
    """One-sided `conf` Clopper–Pearson lower bound of a rate from k events in n trials."""
    return 0.0 if k == 0 else float(beta.ppf(1 - conf, k, n - k + 1))


def _per_seed_and_pooled(counts, n):
    yield from ((f"seed {s}", k, n) for s, k in counts.items())
    yield f"seeds {sorted(counts)} pooled", sum(counts.values()), n * len(counts)


def rate_at_most(counts, n, bound, what):
    """`counts`: events per seed, n trials each. Fails where the rate is shown above `bound` at 99 %."""
    for where, k, m in _per_seed_and_pooled(counts, n):
        lo = cp_lower(k, m)
        assert lo <= bound, f"{what}, {where}: {k}/{m} = {k / m:.4f}, 99 % lower bound {lo:.4f} > {bound}"


def rate_at_least(counts, n, bound, what):
    """`counts`: events per seed, n trials each. Fails unless the rate is shown at least `bound` at 99 %."""
    for where, k, m in _per_seed_and_pooled(counts, n):
        lo = cp_lower(k, m)
        assert lo >= bound, f"{what}, {where}: {k}/{m} = {k / m:.4f}, 99 % lower bound {lo:.4f} < {bound}"


def test_clopper_pearson_bound():
    assert cp_lower(0, 100) == 0.0
    assert cp_lower(100, 100) == pytest.approx(0.01 ** (1 / 100))            # (1 − conf)^(1/n) when k = n
    lo = cp_lower(5, 100)                                                   # P(X ≥ 5 | n, lo) = 1 %
    assert binom.sf(4, 100, lo) == pytest.approx(0.01) and binom.sf(4, 100, 0.9 * lo) < 0.01
    rate_at_most({1: 5, 2: 6}, 100, 0.05, "x")
    with pytest.raises(AssertionError, match="seed 2"):
        rate_at_most({1: 5, 2: 15}, 100, 0.05, "x")
    with pytest.raises(AssertionError, match="pooled"):                    # each seed passes, all four do not
        rate_at_most({1: 10, 2: 10, 3: 10, 4: 10}, 100, 0.05, "x")
    rate_at_least({1: 95, 2: 96}, 100, 0.87, "x")
    with pytest.raises(AssertionError, match="seed 1"):
        rate_at_least({1: 90, 2: 96}, 100, 0.87, "x")


def verdicts(loss, seed, trials, th=ABS, p=P_BASE):
    """Verdict counts over `trials` planted variants; δ is the gate's own margin(th, baseline value)."""
    rng = np.random.default_rng([seed, round(loss * 1e4), round(p * 100), th.max_loss_rel_pct is not None])
    out = Counter()
    for _ in range(trials):
        b, v = planted(rng, loss, p=p)
        out[noninferiority(b, v, margin(th, float(b.mean()))).verdict] += 1
    return out


# -- error rates by simulation -----------------------------------------------------------------------------

@pytest.mark.simulation
@pytest.mark.parametrize("th,p", MARGINS, ids=["absolute", "relative"])
def test_false_accept_rate_at_the_margin_is_at_most_5pct(th, p):
    """A variant whose true loss is exactly δ is accepted at most α = 5 % of the time (measured 3.9 % absolute,
    4.2 % relative; 4.6–4.8 % at a 0.8 baseline, see docs/mutation.md)."""
    trials = 2000
    counts = {s: verdicts(MARGIN, s, trials, th, p)["non-inferior"] for s in SEEDS}
    rate_at_most(counts, trials, 0.05, f"false accepts at L = δ ({th})")


@pytest.mark.simulation
@pytest.mark.parametrize("th,p", MARGINS, ids=["absolute", "relative"])
def test_power_at_twice_the_margin_is_at_least_80pct(th, p):
    trials = 500
    runs = {s: verdicts(2 * MARGIN, s, trials, th, p) for s in SEEDS}
    # rejected = inferior, or inconclusive (→ reject by default)
    rate_at_least({s: trials - r["non-inferior"] for s, r in runs.items()}, trials, 0.80, "power at L = 2δ")
    rate_at_least({s: r["inferior"] for s, r in runs.items()}, trials, 0.30, "proven inferior at L = 2δ")


@pytest.mark.simulation
def test_no_loss_is_mostly_accepted():
    trials = 1000
    counts = {s: verdicts(0.0, s, trials)["non-inferior"] for s in SEEDS}
    rate_at_least(counts, trials, 0.70, "acceptance at L = 0")


# -- the interval against published numbers ----------------------------------------------------------------

def wilson(x, n, z):
    """Wilson's score interval without continuity correction (Newcombe 1998a's method 3)."""
    p, z2 = x / n, z * z
    mid, half = (p + z2 / (2 * n)) / (1 + z2 / n), z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, mid - half), min(1.0, mid + half)


# Newcombe RG (1998a), "Two-sided confidence intervals for the single proportion: comparison of seven methods",
# Stat Med 17:857–872: 95 % limits of his examples, as asserted in the tests of the R package ratesci
# (github.com/petelaud/ratesci, tests/testthat/test3.R, "Single proportion, Newcombe examples").
SINGLE = [  # x, n, Wilson (method 3), Wilson with continuity correction (method 4)
    (15, 148, (0.0624, 0.1605), (0.0598, 0.1644)),
    (0, 20, (0.0, 0.1611), (0.0, 0.2005)),
    (1, 29, (0.0061, 0.1718), (0.0018, 0.1963)),
]

# Newcombe's method 10 (hybrid score: Wilson limits of both marginals, square-and-add with his
# continuity-corrected φ) for the difference of paired proportions, two-sided 95 %, as published and asserted
# in ratesci's tests/testthat/test3.R (moverpairci(..., type = "wilson", corc = TRUE)):
PAIRED_M10 = [  # (e, f, g, h), (lower, upper), decimals published, where
    ((20, 12, 2, 16), (0.0562, 0.3292), 4,
     "Newcombe RG (1998b), Improved confidence intervals for the difference between binomial proportions "
     "based on paired data, Stat Med 17:2635–2650, method 10"),
    ((1, 1, 7, 12), (-0.507, -0.026), 3,
     "Fagerland, Lydersen & Laake (2014), Stat Med 33:2850–2875 (Bentur et al. airway data), Newcombe's method"),
    ((8, 3, 1, 2), (-0.1574, 0.4136), 4, "Tang, Li & Tang (2010), Stat Methods Med Res 21:361–378, MOVER-Wilson"),
]
M10_IDS = ["newcombe1998", "fagerland2014", "tang2010"]


@pytest.mark.parametrize("x,n,m3,m4", SINGLE, ids=[f"{x}/{n}" for x, n, *_ in SINGLE])
def test_wilson_limits_match_newcombe_1998a(x, n, m3, m4):
    assert wilson(x, n, Z95) == pytest.approx(m3, abs=5e-5)
    assert stats._wilson_cc(x, n, Z95) == pytest.approx(m4, abs=5e-5)       # method 4: the one the gate uses
    # the upper end mirrors the lower one: n − x successes
    lo, hi = stats._wilson_cc(n - x, n, Z95)
    assert (lo, hi) == pytest.approx((1 - m4[1], 1 - m4[0]), abs=5e-5)


@pytest.mark.parametrize("cells,published,decimals,source", PAIRED_M10, ids=M10_IDS)
def test_newcombe_method_10_matches_published_limits(cells, published, decimals, source, monkeypatch):
    """The square-and-add step and the φ correction of `newcombe_paired`, fed uncorrected Wilson limits,
    reproduce Newcombe's method 10 (source in PAIRED_M10). One-sided α = 0.025 gives the two-sided 95 % limits."""
    monkeypatch.setattr(stats, "_wilson_cc", wilson)
    e, f, g, h = cells
    d, lo, hi = newcombe_paired(*table(*cells), 0.025)
    assert d == pytest.approx((f - g) / (e + f + g + h))
    tol = 0.5 * 10 ** -decimals + 1e-9
    assert (lo, hi) == pytest.approx(published, abs=tol), source


@pytest.mark.parametrize("cells,published,decimals,source", PAIRED_M10, ids=M10_IDS)
def test_the_gate_uses_method_11_wider_than_method_10(cells, published, decimals, source):
    """What ships is method 11: the same with continuity-corrected Wilson limits (method 4, checked above), so
    each bound lies outside the published method-10 one by more than its rounding."""
    d, lo, hi = newcombe_paired(*table(*cells), 0.025)
    assert lo < published[0] - 0.004 and hi > published[1] + 0.004


def test_method_11_values_pinned():
    """Regression pins computed by this implementation (not published numbers): method 11 for Newcombe's
    example above, and for a table without discordant pairs, where φ's correction keeps the interval open."""
    assert newcombe_paired(*table(20, 12, 2, 16), 0.025) == pytest.approx((0.2, 0.04595, 0.33835), abs=5e-6)
    assert newcombe_paired(*table(27, 0, 0, 27), 0.025) == pytest.approx((0.0, -0.03742, 0.03742), abs=5e-6)


def test_no_discordant_pair_is_no_proof_of_non_inferiority():
    """Without Newcombe's correction of φ, identical outcomes with both concordant cells filled gave a
    zero-width interval: two samples were 'non-inferior' at any margin."""
    for cells in ((1, 0, 0, 1), (10, 0, 0, 10)):
        d, lo, hi = newcombe_paired(*table(*cells), 0.05)
        assert d == 0 and lo < -0.05 and hi > 0.05
        b, v = table(*cells)
        assert noninferiority(b, v, MARGIN).verdict == "inconclusive"


def test_one_sided_level_maps_to_the_normal_quantile():
    b, v = table(20, 12, 2, 16)
    d95, lo95, hi95 = newcombe_paired(b, v, 0.025)
    d90, lo90, hi90 = newcombe_paired(b, v, 0.05)
    assert d90 == d95 and lo95 < lo90 < d90 < hi90 < hi95                    # one-sided 95 % is the narrower


def test_newcombe_interval_contains_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    b, v = planted(rng, 0.03, n=200)
    d, lo, hi = newcombe_paired(b, v, 0.05)
    assert lo <= d <= hi
    b4, v4 = np.tile(b, 4), np.tile(v, 4)
    d4, lo4, hi4 = newcombe_paired(b4, v4, 0.05)
    assert d4 == pytest.approx(d) and hi4 - lo4 < hi - lo


def test_wilson_cc_edges():
    assert stats._wilson_cc(0, 10, Z95)[0] == 0.0 and stats._wilson_cc(10, 10, Z95)[1] == 1.0
    lo, hi = stats._wilson_cc(5, 10, Z95)
    assert lo + hi == pytest.approx(1.0) and 0 < lo < 0.5 < hi < 1


# -- decisions, the MDE and the report line ----------------------------------------------------------------

def test_decide_boundaries():
    assert stats.verdict_of(0.0, -0.1, 0.02, 0.02) == "non-inferior"            # UCB = δ still proves it
    assert stats.verdict_of(0.05, 0.02, 0.08, 0.02) == "inconclusive"           # LCB = δ does not prove inferiority
    assert stats.verdict_of(0.05, 0.021, 0.08, 0.02) == "inferior"
    assert stats.verdict_of(0.01, -0.01, 0.03, 0.02) == "inconclusive"


def test_mde_formula():
    assert stats.mde(1.0, 100, 0.05, 0.8) == pytest.approx((1.6448536 + 0.8416212) / 10)
    assert stats.mde(0.5, 400, 0.025, 0.9) == pytest.approx((1.9599640 + 1.2815516) * 0.5 / 20)


def test_small_sample_is_inconclusive_with_its_mde():
    t = noninferiority(np.ones(20), np.ones(20), MARGIN)
    assert t.verdict == "inconclusive" and t.mde > MARGIN
    # no discordant pair: the MDE is sized from the variance of a flip rate at the margin, √δ
    assert t.mde == pytest.approx(stats.mde(math.sqrt(1 / 20), 20, 0.05, 0.8))   # δ < 1/n: the floor is √(1/n)
    assert "n=20" in t.line("m") and "δ=0.02" in t.line("m")
    big = noninferiority(np.ones(100), np.ones(100), MARGIN)
    assert big.mde == pytest.approx(stats.mde(math.sqrt(MARGIN), 100, 0.05, 0.8))
    one = noninferiority(np.ones(1), np.ones(1), MARGIN)
    assert one.n == 1 and one.mde == pytest.approx(stats.mde(1.0, 1, 0.05, 0.8))


def test_binary_test_fields_and_line():
    b, v = table(20, 12, 2, 16)
    t = noninferiority(b, v, 0.04, alpha=0.025, power=0.9)
    _, lo, hi = newcombe_paired(b, v, 0.025)
    assert (t.n, t.loss, t.lcb, t.ucb, t.margin) == (50, pytest.approx(0.2), lo, hi, 0.04)
    assert t.verdict == "inferior" and t.method == "Newcombe paired score"
    sd = float(np.std(b.astype(float) - v.astype(float), ddof=1))
    assert t.mde == pytest.approx(stats.mde(sd, 50, 0.025, 0.9))
    assert t.line("acc") == ("acc: Δ=+0.2 (one-sided bounds [+0.04595, +0.3383]) vs δ=0.04, n=50, "
                             "MDE=0.227 → inferior")
    assert t.as_dict() == {"n": 50, "loss": t.loss, "lcb": lo, "ucb": hi, "margin": 0.04, "mde": t.mde,
                           "verdict": "inferior", "method": "Newcombe paired score"}


def test_lower_is_better_swaps_the_sides():
    b, v = table(20, 12, 2, 16)                                             # 0/1 "error" flags: base errs more
    up = noninferiority(b, v, 0.04)
    down = noninferiority(b, v, 0.04, higher_is_better=False)
    assert up.loss == pytest.approx(0.2) and down.loss == pytest.approx(-0.2)
    assert (down.lcb, down.ucb) == pytest.approx((-up.ucb, -up.lcb))
    assert up.verdict == "inferior" and down.verdict == "non-inferior"


def test_mean_metric_bootstrap_and_its_implied_sd():
    rng = np.random.default_rng(3)
    base = rng.normal(0.6, 0.2, 500)
    var = base - 0.05 + rng.normal(0, 0.1, 500)                             # sd of the differences ≈ 0.1
    t = noninferiority(base, var, 0.02, kind="mean")
    assert t.method == "paired bootstrap" and t.verdict == "inferior" and t.lcb <= t.loss <= t.ucb
    assert t.loss == pytest.approx(float(np.mean(base - var)))
    sd = float(np.std(base - var, ddof=1))
    assert t.mde == pytest.approx(stats.mde(sd, 500, 0.05, 0.8), rel=0.15)   # the interval implies the sd
    assert (t.ucb - t.loss) == pytest.approx(norm.ppf(0.95) * sd / math.sqrt(500), rel=0.15)


def test_paired_bootstrap_is_seeded_and_one_sided():
    rng = np.random.default_rng(4)
    b = rng.normal(0, 1, (200, 1))
    v = b + rng.normal(0.1, 0.5, (200, 1))
    mean = lambda x, axis: np.mean(x[0], axis=axis)                          # noqa: E731
    r0, r0b, r1 = (paired_bootstrap(b, v, mean, 0.05, seed=s) for s in (0, 0, 1))
    assert r0 == r0b and r0 != r1
    point, lo, hi = r0
    assert point == pytest.approx(float(np.mean(b - v))) and lo < point < hi
    _, lo2, hi2 = paired_bootstrap(b, v, mean, 0.2, seed=0)
    assert lo < lo2 < hi2 < hi                                              # a lower level, a narrower interval
    assert paired_bootstrap(b, v, mean, 0.05, seed=0, n_resamples=500) != r0


def test_aggregate_perplexity_bootstrap():
    rng = np.random.default_rng(0)
    base = np.c_[rng.normal(-10, 2, 300), rng.integers(4, 9, 300)]
    worse = base.copy()
    worse[:, 0] -= 1.0                                # every sentence 1 nat less likely
    ppl = AGGREGATES["word_perplexity"]
    t = noninferiority(base, worse, margin=0.05, higher_is_better=False, kind="aggregate", statistic=ppl)
    assert t.verdict == "inferior" and t.lcb <= t.loss <= t.ucb
    assert t.loss == pytest.approx(float(ppl(worse.T, -1) - ppl(base.T, -1)))
    same = noninferiority(base, base.copy(), margin=0.05, higher_is_better=False, kind="aggregate", statistic=ppl)
    assert same.verdict == "non-inferior"


def test_aggregates_match_lm_eval_definitions():
    x = np.array([[-2.0, -4.0], [1, 3]]).T                                  # ll per doc, words (or bytes) per doc
    cols = x.T
    assert AGGREGATES["word_perplexity"](cols, -1) == pytest.approx(math.exp(6 / 4))
    assert AGGREGATES["byte_perplexity"](cols, -1) == pytest.approx(math.exp(6 / 4))
    assert AGGREGATES["bits_per_byte"](cols, -1) == pytest.approx(6 / 4 / math.log(2))


# -- the gate on lm-eval per-sample logs -------------------------------------------------------------------

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
    from evalgate.results import VariantResults

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
    g = decide(cfg, {n: VariantResults(tmp_path / n).load() for n in ("baseline", "same", "bad")})
    assert g["variants"]["same"]["verdict"] == "accept"
    bad_v = g["variants"]["bad"]
    assert bad_v["verdict"] == "reject" and "→ inferior" in bad_v["reason"]
    (acc_check,) = [c for c in bad_v["checks"] if c["metric"] == "lmeval/t/acc/none"]
    assert acc_check["test"]["n"] == N and acc_check["loss"] == pytest.approx(0.1)
    assert acc_check["loss_rel_pct"] == pytest.approx(100 * 0.1 / float(np.mean(acc)))
    (ppl_check,) = [c for c in g["variants"]["same"]["checks"] if c["metric"] == "lmeval/t/word_perplexity/none"]
    assert ppl_check["test"]["method"] == "paired bootstrap" and ppl_check["passed"]


def test_fidelity_metrics_gate_as_point_estimates(tmp_path):
    from evalgate.results import VariantResults

    rng = np.random.default_rng(2)
    acc, ll = rng.random(N) < P_BASE, rng.normal(-10, 1, N)
    for name in ("baseline", "v"):
        _write(tmp_path / name, acc, ll)
    cfg = parse({"model": {"source": "local", "id": "m"}, "engine": {"name": "hf"},
                 "workload": {"source": "tasks", "tasks": ["t"], "max_tokens": 4},
                 "eval": {"tasks": ["t"]}, "baseline": {}, "variants": {"v": {}},
                 "gate": {"quality": {"fidelity/answer_flip_rate": {"max_loss_abs": 0.05}}}})
    results = {n: VariantResults(tmp_path / n).load() for n in ("baseline", "v")}
    results["baseline"]["metrics"]["fidelity/answer_flip_rate"] = 0.0
    results["v"]["metrics"]["fidelity/answer_flip_rate"] = 0.08
    g = decide(cfg, results)
    assert g["variants"]["v"]["verdict"] == "reject" and "answer_flip_rate" in g["variants"]["v"]["reason"]
    (check,) = g["variants"]["v"]["checks"]
    assert "test" not in check and check["loss"] == pytest.approx(0.08)


# -- conventions the mutation run asked about (docs/mutation.md) -------------------------------------------

def test_newcombe_takes_any_0_1_array():
    b, v = table(20, 12, 2, 16)
    want = newcombe_paired(b, v, 0.05)
    assert newcombe_paired(b.astype(int), v, 0.05) == want and newcombe_paired(b, v.astype(int), 0.05) == want
    assert newcombe_paired(b.astype(float).tolist(), v.astype(float).tolist(), 0.05) == want


def test_a_constant_side_has_no_correlation():
    """Every base sample right (a marginal of 1, φ undefined): φ is taken as 0, so the bounds are the plain
    square-and-add of the two Wilson intervals."""
    b, v = table(36, 14, 0, 0)
    d, lo, hi = newcombe_paired(b, v, 0.025)
    l1, u1 = stats._wilson_cc(50, 50, Z95)
    l2, u2 = stats._wilson_cc(36, 50, Z95)
    assert d == pytest.approx(0.28)
    assert lo == pytest.approx(d - math.hypot(1 - l1, u2 - 0.72)) and hi == pytest.approx(d + math.hypot(u1 - 1, 0.72 - l2))


def test_bootstrap_defaults_and_one_sided_lower_bound():
    rng = np.random.default_rng(6)
    b = rng.normal(0, 1, (400, 1))
    v = b + rng.normal(0.1, 0.5, (400, 1))
    mean = lambda x, axis: np.mean(x[0], axis=axis)                          # noqa: E731
    default = paired_bootstrap(b, v, mean, 0.05)
    assert default == paired_bootstrap(b, v, mean, 0.05, seed=0, n_resamples=2000)
    point, lo, hi = default
    # symmetric differences: the one-sided lower bound (α in the lower tail) mirrors the upper one; a two-sided
    # interval's lower end (α/2) would lie ≈ 19 % further out
    assert (point - lo) == pytest.approx(hi - point, rel=0.08)


def test_noninferiority_seeds_the_bootstrap():
    rng = np.random.default_rng(7)
    b = rng.normal(0.5, 0.2, 300)
    v = b + rng.normal(0, 0.1, 300)
    t0 = noninferiority(b, v, 0.02, kind="mean")
    assert t0 == noninferiority(b, v, 0.02, kind="mean", seed=0)
    t1 = noninferiority(b, v, 0.02, kind="mean", seed=1)
    assert t1 == noninferiority(b, v, 0.02, kind="mean", seed=1) and (t1.lcb, t1.ucb) != (t0.lcb, t0.ucb)


def test_two_samples_size_the_mde_from_their_own_spread():
    t = noninferiority(np.array([1.0, 0.0]), np.array([0.0, 1.0]), MARGIN)   # diffs ±1: sd √2 > √(1/2)
    assert t.mde == pytest.approx(stats.mde(math.sqrt(2), 2, 0.05, 0.8))
