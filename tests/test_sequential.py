"""Sequential early rejection: the schedule, the stop through the real `sequential.evaluate_in_looks` on lm-eval-shaped
samples, the Bonferroni split over the looks, and its error rates and savings by simulation (planted
per-sample flips as in test_stats, with the same binomial margins over several seeds)."""
import json

import numpy as np
import pytest
from test_stats import MARGIN, P_BASE, SEEDS, N, planted, rate_at_least, rate_at_most

from evalgate import sequential
from evalgate.config import parse
from evalgate.gate import margin
from evalgate.results import VariantResults
from evalgate.stats import paired_test

LOOKS, ALPHA = [0.25, 0.5], 0.01
KEY = "lmeval/t/acc/none"


def cfg(looks=LOOKS, alpha=ALPHA, quality=None, **sq):
    seq = {"enabled": True, "looks": looks, **sq}
    if alpha is not None:
        seq["alpha"] = alpha
    return parse({"model": {"source": "local", "id": "m"}, "engine": {"name": "hf"},
                  "workload": {"source": "tasks", "tasks": ["t"], "max_tokens": 4},
                  "eval": {"tasks": ["t", "u"], "fidelity": {"tasks": ["t"]}}, "baseline": {}, "variants": {"v": {}},
                  "gate": {"quality": quality or {"t/acc": {"max_loss_abs": MARGIN}}, "sequential": seq}})


def rows(outcomes, metric="acc"):
    return [{"doc_id": i, "filter": "none", metric: float(x)} for i, x in enumerate(outcomes)]


def write_baseline(d, outcomes, up=True):
    d.mkdir(parents=True, exist_ok=True)
    (d / "status.json").write_text(json.dumps({"ok": True}))
    (d / "metrics.json").write_text(json.dumps({KEY: float(np.mean(outcomes))}))
    (d / "lm_eval.json").write_text(json.dumps({"higher_is_better": {"t": {"acc": up}}}))
    with open(d / "samples_t.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows(outcomes))


def looks(c, evaluate_docs, n_docs, base, base_rows):
    """sequential.evaluate_in_looks with the config's looks, alpha and seed, as the variant's run calls it."""
    sq = c.gate["sequential"]
    return sequential.evaluate_in_looks(evaluate_docs, n_docs, lambda: (base, base_rows), c.thresholds, sq["looks"],
                                        sq.get("alpha", 0.01), c.seed)


def from_files(c, d, evaluate_docs, n_docs):
    """The baseline read back through the results store, as the variant's run reads it."""
    store = VariantResults(d)
    return looks(c, evaluate_docs, n_docs, store.load(), {t: store.samples(t) for t in n_docs})


def simulate(c, d, base, var, n_docs=None):
    """One variant through the looks; the docs it asks for are served from `var`."""
    asked, served = [], rows(var)

    def evaluate_docs(docs):
        asked.append(docs)
        return {t: [served[i] for i in ids] for t, ids in docs.items()}

    write_baseline(d, base)
    return from_files(c, d, evaluate_docs, n_docs or {"t": len(var)}), asked


# -- configuration and schedule ----------------------------------------------------------------------------

def test_enabled_and_gated_tasks():
    assert sequential.enabled(cfg().gate["sequential"])
    assert not sequential.enabled(cfg(enabled=False).gate["sequential"])
    no_flag = cfg()
    del no_flag.gate["sequential"]["enabled"]
    assert not sequential.enabled(no_flag.gate["sequential"])            # off unless asked for
    assert not sequential.enabled(cfg(looks=[]).gate["sequential"])
    plain = parse({"model": {"source": "local", "id": "m"}, "engine": {"name": "hf"},
                   "workload": {"source": "tasks", "tasks": ["t"], "max_tokens": 4},
                   "eval": {"tasks": ["t"]}, "baseline": {}, "variants": {}, "gate": {}})
    assert not sequential.enabled(plain.gate.get("sequential"))
    assert not sequential.enabled(None)
    c = cfg(quality={"u/acc": {"max_loss_abs": 0.1}, "t/em/strict": {"max_loss_abs": 0.1},
                     "t/acc": {"max_loss_abs": 0.1}, "fidelity/kl_mean": {"max_loss_abs": 0.1}})
    assert sequential.gated_tasks(c.thresholds) == ["t", "u"]                       # sorted, once each, no fidelity


def test_schedule_is_growing_seeded_prefixes():
    s = sequential.schedule({"a": 400, "b": 10}, [0.25, 0.5], seed=0)
    assert [len(x["a"]) for x in s] == [100, 200] and [len(x["b"]) for x in s] == [3, 5]   # ceil(2.5) = 3
    assert set(s[0]["a"]) < set(s[1]["a"])                            # each look extends the last
    assert all(x["a"] == sorted(x["a"]) for x in s)
    assert s == sequential.schedule({"a": 400, "b": 10}, [0.25, 0.5], seed=0)
    assert s != sequential.schedule({"a": 400, "b": 10}, [0.25, 0.5], seed=1)
    assert s[0]["a"] != list(range(100))                              # shuffled, not the first docs
    assert sequential.schedule({"a": 400}, [0.25], seed=0)[0]["a"] == s[0]["a"]  # per-task seed
    assert [len(x["a"]) for x in sequential.schedule({"a": 400}, [0.0001, 0.001], seed=0)] == [1, 1]  # ≥ 1 doc


# -- the stop through the looks ---------------------------------------------------------------------------

def test_broken_variant_stops_at_the_first_look(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.random(N) < 0.9
    out, asked = simulate(cfg(), tmp_path, base, np.zeros(N, bool))
    assert out["stopped"] and out["look"] == 1 and out["looks"] == 2 and out["docs_evaluated"] == N // 4
    assert out["fraction"] == 0.25 and out["alpha_per_look"] == ALPHA / 2
    assert len(asked) == 1 and len(asked[0]["t"]) == N // 4          # the rest was never asked for
    assert out["reason"].startswith("stopped early at look 1 of 2 (25% of the docs, α = 0.005 per look): ")
    assert "→ inferior" in out["reason"] and out["check"]["test"]["n"] == N // 4
    check = out["check"]
    assert check["metric"] == KEY and check["passed"] is False and check["margin"] == MARGIN
    assert check["baseline"] == pytest.approx(float(np.mean(base)))
    assert check["loss"] == pytest.approx(float(np.mean(base[asked[0]["t"]])))
    assert check["reason"] == out["reason"].split(": ", 1)[1] and check["test"]["verdict"] == "inferior"
    assert [r["doc_id"] for r in out["rows"]["t"]] == asked[0]["t"]
    assert 0 <= out["eval_s"] < 60


def test_each_look_asks_only_for_new_docs(tmp_path):
    rng = np.random.default_rng(1)
    base = rng.random(N) < 0.9
    out, asked = simulate(cfg(), tmp_path, base, base.copy())
    assert not out["stopped"] and out["docs_evaluated"] == N // 2 and out["look"] == 2
    assert set(out) == {"look", "looks", "fraction", "alpha_per_look", "docs_evaluated", "eval_s", "rows",
                        "stopped", "unreproducible"} and out["unreproducible"] == []
    assert [len(a["t"]) for a in asked] == [N // 4, N // 4] and not set(asked[0]["t"]) & set(asked[1]["t"])
    assert len(out["rows"]["t"]) == N // 2


def test_a_task_with_nothing_new_is_not_asked_again(tmp_path):
    """A one-doc task has its doc at the first look; the second asks only the other task, and a look that
    adds nothing at all asks nothing."""
    base = np.ones(N, bool)
    out, asked = simulate(cfg(), tmp_path, base, base.copy(), n_docs={"t": N, "u": 1})
    assert [sorted(a) for a in asked] == [["t", "u"], ["t"]] and asked[0]["u"] == [0]
    assert out["docs_evaluated"] == N // 2 + 1 and [r["doc_id"] for r in out["rows"]["u"]] == [0]
    out, asked = simulate(cfg(), tmp_path, base, base.copy(), n_docs={"t": 2})   # ceil(.25·2) = ceil(.5·2) = 1
    assert len(asked) == 1 and out["look"] == 2 and out["docs_evaluated"] == 1 and not out["stopped"]


def test_default_alpha_is_split_over_the_looks(tmp_path):
    out, _ = simulate(cfg(looks=[0.25, 0.5, 0.75, 0.9], alpha=None), tmp_path, np.ones(40, bool), np.ones(40, bool))
    assert out["alpha_per_look"] == pytest.approx(0.01 / 4) and out["looks"] == 4


def test_bonferroni_split_prevents_a_stop_that_the_full_alpha_would_make(tmp_path):
    """Looks at 50 % and 75 % with α = 0.01: each look tests at α/2 = 0.005. The variant below loses 16 docs,
    all among those the second look adds: at the second look its lower bound clears δ at level 0.01 but not at
    0.005, so the split (and only the split) keeps it running."""
    looks = [0.5, 0.75]
    first, second = (set(x["t"]) for x in sequential.schedule({"t": N}, looks, seed=0))
    base = np.ones(N, bool)
    base[sorted(second)[:40]] = False                                     # 40 docs both fail
    var = base.copy()
    var[[i for i in sorted(second - first) if base[i]][:16]] = False
    seen = sorted(second)
    assert paired_test(base[seen] * 1.0, var[seen] * 1.0, "acc", MARGIN, True, 0.005).verdict != "inferior"
    assert paired_test(base[seen] * 1.0, var[seen] * 1.0, "acc", MARGIN, True, 0.01).verdict == "inferior"
    out, _ = simulate(cfg(looks=looks, alpha=0.01), tmp_path, base, var)
    assert not out["stopped"] and out["alpha_per_look"] == 0.005
    out, _ = simulate(cfg(looks=looks, alpha=0.02), tmp_path, base, var)   # 0.01 per look: it stops
    assert out["stopped"] and out["look"] == 2 and out["alpha_per_look"] == 0.01


# -- interim_check on its own ------------------------------------------------------------------------------

def _base(values, up=True, hib=True):
    return {"status": {"ok": True}, "metrics": values,
            "higher_is_better": {"lmeval/t/acc": up} if hib else {}}


def interim(c, base, base_rows, rows, alpha):
    return sequential.interim_check(c.thresholds, base, base_rows, rows, alpha, seed=c.seed)


def test_interim_check_skips_what_it_cannot_test():
    bad = rows(np.zeros(100))
    good = rows(np.ones(100))
    c = cfg(quality={"fidelity/kl_mean": {"max_loss_abs": 0.1}, "t/acc": {"max_loss_abs": 0.02}})
    assert interim(c, _base({KEY: 1.0}), {"t": good}, {"t": bad}, 0.01)["metric"] == KEY
    assert interim(c, _base({}), {"t": good}, {"t": bad}, 0.01) is None        # no baseline value
    assert interim(c, _base({KEY: 1.0}), {"t": None}, {"t": bad}, 0.01) is None
    assert interim(c, _base({KEY: 1.0}), {}, {"t": bad}, 0.01) is None
    assert interim(c, _base({KEY: 1.0}), {"t": good}, {"t": []}, 0.01) is None
    assert interim(c, _base({KEY: 1.0}), {"t": good}, {}, 0.01) is None
    moved = [{**r, "doc_id": r["doc_id"] + 1000} for r in bad]                                   # no doc in common
    assert interim(c, _base({KEY: 1.0}), {"t": good}, {"t": moved}, 0.01) is None
    other = rows(np.zeros(100), metric="f1")                                                     # not the metric
    assert interim(c, _base({KEY: 1.0}), {"t": good}, {"t": other}, 0.01) is None


def test_interim_check_uses_the_gate_margin_direction_and_level():
    rng = np.random.default_rng(5)
    b = rng.random(400) < 0.8
    v = b.copy()
    v[np.flatnonzero(b)[:24]] = False                                       # 6 points lost
    c_rel = cfg(quality={"t/acc": {"max_loss_abs": 0.5, "max_loss_rel_pct": 2.5}})   # δ = 2.5 % of 0.8 = 0.02
    c_abs = cfg(quality={"t/acc": {"max_loss_abs": 0.1}})
    args = ({"t": rows(b)}, {"t": rows(v)})
    hit = interim(c_rel, _base({KEY: 0.8}), *args, 0.01)
    assert hit["margin"] == pytest.approx(0.02) and hit["baseline"] == 0.8 and hit["loss"] == pytest.approx(0.06)
    assert hit["test"]["verdict"] == "inferior" and hit["passed"] is False
    assert hit["test"] == paired_test(b * 1.0, v * 1.0, "acc", hit["margin"], True, 0.01, power=0.8).as_dict()
    assert hit["reason"].startswith(KEY + ": Δ=+0.06 ")
    assert interim(c_abs, _base({KEY: 0.8}), *args, 0.01) is None         # 6 points < 10
    # lower is better: the same drop is a gain
    assert interim(c_rel, _base({KEY: 0.8}, up=False), *args, 0.01) is None
    assert interim(c_rel, _base({KEY: 0.8}, hib=False), *args, 0.01) is not None  # default: up
    # the level: the same loss is not proven above δ at α = 1e-6
    assert interim(c_rel, _base({KEY: 0.8}), *args, 1e-6) is None


# -- error rates by simulation -----------------------------------------------------------------------------

def trials(loss, seed, n_trials, quality=None):
    """Per trial: stopped?, docs evaluated, and the whole procedure's verdict (a stop rejects; otherwise the
    gate's test on all N samples at α = 0.05 decides, against the same δ)."""
    c = cfg(quality=quality)
    rng = np.random.default_rng([seed, round(loss * 1e4), 7 if quality is None else 8])
    out = []
    for _ in range(n_trials):
        base, var = planted(rng, loss)
        result = {"status": {"ok": True}, "metrics": {KEY: float(base.mean())}, "higher_is_better": {"lmeval/t/acc": True}}
        served = rows(var)
        seq = looks(c, lambda docs, served=served: {"t": [served[i] for i in docs["t"]]}, {"t": N}, result,
                    {"t": rows(base)})
        delta = margin(c.thresholds[0], result["metrics"][KEY])
        accepted = not seq["stopped"] and paired_test(base * 1.0, var * 1.0, "acc", delta, True,
                                                      0.05).verdict == "non-inferior"
        out.append((seq["stopped"], seq["docs_evaluated"], accepted))
    stopped, docs, accepted = (np.array(x) for x in zip(*out))
    return int(stopped.sum()), docs, int(accepted.sum())


@pytest.mark.simulation
@pytest.mark.parametrize("quality", [None, {"t/acc": {"max_loss_abs": 0.05, "max_loss_rel_pct": 100 * MARGIN / P_BASE}}],
                         ids=["absolute", "relative"])
def test_at_the_margin_wrong_stops_stay_within_alpha_and_false_accepts_within_5pct(quality):
    """True loss = δ (absolute 0.02, or 2.22 % of the baseline's 0.9, tighter than 0.05): Bonferroni over the
    looks keeps wrong stops at ≤ α = 1 % (the documented bound; measured 0 in 6,000 trials, 0.2 % without the
    split), and as a stop never accepts, the gate's false-accept rate stays ≤ 5 %."""
    n = 600
    runs = {s: trials(MARGIN, s, n, quality) for s in SEEDS}
    rate_at_most({s: r[0] for s, r in runs.items()}, n, ALPHA, "wrong stops at L = δ")
    rate_at_most({s: r[2] for s, r in runs.items()}, n, 0.05, "false accepts at L = δ")


@pytest.mark.simulation
def test_power_at_twice_the_margin_stays_at_least_80pct():
    n = 100
    runs = {s: trials(2 * MARGIN, s, n) for s in SEEDS}
    rate_at_least({s: n - r[2] for s, r in runs.items()}, n, 0.80, "rejections at L = 2δ")


@pytest.mark.simulation
def test_a_clearly_broken_variant_is_stopped_early_and_saves_most_docs():
    """16 points lost: stopped (≥ 95 %), and mostly at the first look, so that on average at most 35 % of the
    docs are evaluated: that is at most 40 % of the variants needing the second look (measured ≈ 20 %, 30 % of
    the docs)."""
    n = 400
    runs = {s: trials(8 * MARGIN, s, n) for s in SEEDS}
    rate_at_least({s: r[0] for s, r in runs.items()}, n, 0.95, "stops at L = 8δ")
    rate_at_most({s: int(np.sum(r[1] > N // 4)) for s, r in runs.items()}, n, 0.40, "second looks at L = 8δ")


@pytest.mark.simulation
def test_a_lossless_variant_is_not_stopped():
    """A stop is the only way the looks change a verdict, so none at L = 0 leaves the gate's acceptance of a
    lossless variant (≥ 70 %, test_stats) untouched."""
    n = 100
    runs = {s: trials(0.0, s, n) for s in SEEDS}
    assert all(r[0] == 0 for r in runs.values()), {s: r[0] for s, r in runs.items()}


def test_interim_check_goes_on_past_a_metric_it_cannot_test():
    bad, good = rows(np.zeros(100)), rows(np.ones(100))
    c = cfg(quality={"u/acc": {"max_loss_abs": 0.02}, "t/em": {"max_loss_abs": 0.02}, "t/acc": {"max_loss_abs": 0.02}})
    base = _base({KEY: 1.0, "lmeval/u/acc/none": 1.0, "lmeval/t/em/none": 1.0})
    # u: no rows yet; t/em: not in the logged samples (no pair); t/acc: clearly inferior
    assert interim(c, base, {"t": good, "u": good}, {"t": bad}, 0.01)["metric"] == KEY


def test_interim_check_on_an_aggregate_metric_uses_the_seed():
    """Perplexity samples are (loglikelihood, words) pairs: the look recomputes the aggregate, with the bootstrap
    seeded by the config's seed."""
    rng = np.random.default_rng(10)
    ll = rng.normal(-10, 1, 200)
    b_rows = [{"doc_id": i, "filter": "none", "word_perplexity": [x, 5]} for i, x in enumerate(ll)]
    v_rows = [{**r, "word_perplexity": [r["word_perplexity"][0] - 1.0, 5]} for r in b_rows]   # 1 nat worse each
    q = {"t/word_perplexity": {"max_loss_rel_pct": 5}}
    c = parse({**cfg(quality=q).raw, "seed": 5})
    base = {"status": {"ok": True}, "metrics": {"lmeval/t/word_perplexity/none": 7.4},
            "higher_is_better": {"lmeval/t/word_perplexity": False}}
    hit = interim(c, base, {"t": b_rows}, {"t": v_rows}, 0.01)
    pairs = [np.array([r["word_perplexity"] for r in x]) for x in (b_rows, v_rows)]
    want = paired_test(*pairs, "word_perplexity", margin(c.thresholds[0], 7.4), False, 0.01, seed=5)
    assert hit["test"] == want.as_dict() and want.verdict == "inferior"
    assert hit["reason"].startswith("lmeval/t/word_perplexity/none: Δ=")


def test_run_keeps_rows_of_tasks_it_did_not_schedule(tmp_path):
    """lm-eval may log a group's subtasks under their own names: they are kept with the rest."""
    base = np.ones(N, bool)
    write_baseline(tmp_path, base)
    served = rows(base)
    out = from_files(cfg(), tmp_path, lambda docs: {"t": [served[i] for i in docs["t"]], "t_sub": [served[0]]}, {"t": N})
    assert len(out["rows"]["t_sub"]) == 2 and out["docs_evaluated"] == N // 2 + 1


def test_the_first_look_runs_before_the_baseline_is_there(tmp_path):
    """Scheduled, all quality phases run at once: a variant's first look is evaluated, then it waits for
    the baseline's results (written later, by another process) and stops on them as it would serially."""
    import threading
    import time

    rng = np.random.default_rng(0)
    base, order = rng.random(N) < 0.9, []
    served = rows(np.zeros(N, bool))
    store = VariantResults(tmp_path / "baseline")

    def evaluate_docs(docs):
        order.append(("evaluate", (tmp_path / "baseline" / "status.json").exists()))
        return {t: [served[i] for i in ids] for t, ids in docs.items()}

    def baseline():
        store.wait_status(30)
        order.append(("baseline", True))
        return store.load(), {"t": store.samples("t")}

    def later():   # the baseline's own quality ends while the variant's first look runs; its status last
        time.sleep(0.5)
        write_baseline(tmp_path / "staging", base)
        for f in sorted((tmp_path / "staging").iterdir(), key=lambda f: f.name == "status.json"):
            f.rename(tmp_path / "baseline" / f.name)

    c = cfg()
    (tmp_path / "baseline").mkdir()
    threading.Thread(target=later).start()
    sq = c.gate["sequential"]
    out = sequential.evaluate_in_looks(evaluate_docs, {"t": N}, baseline, c.thresholds, sq["looks"],
                                       sq["alpha"], c.seed)
    assert order == [("evaluate", False), ("baseline", True)]     # evaluated first, compared once it was there
    assert out["stopped"] and out["look"] == 1                     # the same stop as with the baseline given
    serial, _ = simulate(cfg(), tmp_path / "serial", base, np.zeros(N, bool))
    assert out["reason"] == serial["reason"]
    with pytest.raises(TimeoutError, match="status.json: not written within"):
        VariantResults(tmp_path / "never").wait_status(0.3)


def test_no_baseline_to_compare_with_means_no_stop(tmp_path):
    out = sequential.evaluate_in_looks(lambda docs: {t: rows(np.zeros(N, bool))[:len(ids)] for t, ids in docs.items()},
                                       {"t": N}, lambda: None, cfg().thresholds, LOOKS, ALPHA, 0)
    assert not out["stopped"] and out["look"] == len(LOOKS)


def test_a_stop_is_evaluated_again_and_stands_when_it_reproduces(tmp_path):
    """A stop's task is evaluated once more on the same docs (uncached); the same results → the stop
    stands as it was, the repeat's samples kept beside the look's."""
    rng = np.random.default_rng(0)
    base = rng.random(N) < 0.9
    write_baseline(tmp_path, base)
    served, asked_again = rows(np.zeros(N, bool)), []

    def again(docs):
        asked_again.append(docs)
        return {t: [served[i] for i in ids] for t, ids in docs.items()}

    c = cfg()
    store = VariantResults(tmp_path)
    plain, _ = simulate(cfg(), tmp_path / "plain", base, np.zeros(N, bool))
    out = sequential.evaluate_in_looks(lambda docs: {t: [served[i] for i in ids] for t, ids in docs.items()}, {"t": N},
                                       lambda: (store.load(), {"t": store.samples("t")}), c.thresholds, LOOKS, ALPHA,
                                       c.seed, repeat=again)
    assert out["stopped"] and out["look"] == 1 and out["reason"] == plain["reason"]
    assert asked_again == [{"t": sorted(r["doc_id"] for r in out["rows"]["t"])}]
    rep = out["repeat"]
    assert (rep["task"], rep["docs"], rep["changed_docs"], rep["reproduced"]) == ("t", N // 4, 0, True)
    assert rep["outcome"].startswith("inferior again: ") and "rows" not in rep
    assert out["rows"]["t.repeat"] == out["rows"]["t"]


def _wrong_first(tmp_path, on_unreproducible):
    """A variant whose engine answers the looks wrongly the first time and rightly when asked again."""
    rng = np.random.default_rng(0)
    base = rng.random(N) < 0.9
    write_baseline(tmp_path, base)
    wrong, right = rows(np.zeros(N, bool)), rows(base)
    asked: set[int] = set()

    def first_wrong(docs):   # an engine fault: a doc's first answer wrong, every later one right
        out = {t: [right[i] if i in asked else wrong[i] for i in ids] for t, ids in docs.items()}
        asked.update(i for ids in docs.values() for i in ids)
        return out

    c = cfg()
    store = VariantResults(tmp_path)
    policy = {} if on_unreproducible is None else {"on_unreproducible": on_unreproducible}
    out = sequential.evaluate_in_looks(first_wrong, {"t": N}, lambda: (store.load(), {"t": store.samples("t")}),
                                       c.thresholds, LOOKS, ALPHA, c.seed, repeat=first_wrong, **policy)
    return out, base


def test_evaluate_on_checks_an_unreproduced_look_on_its_repeat_and_goes_on(tmp_path):
    """The look's results were wrong (an engine fault: the same greedy requests scored differently the
    second time, as vLLM draft speculation did on an H100, docs/results/h100-2026-11-26-23): with
    on_unreproducible evaluate_on the look is checked on the repeat and the evaluation goes on, each such
    look recorded with the count of docs that changed; the first answers are kept."""
    out, base = _wrong_first(tmp_path, "evaluate_on")
    assert not out["stopped"] and out["look"] == len(LOOKS)
    first = out["unreproducible"]
    assert [u["look"] for u in first] == [1, 2] and {u["task"] for u in first} == {"t"}
    look1 = sequential.schedule({"t": N}, LOOKS, cfg().seed)[0]["t"]
    assert first[0]["docs"] == N // 4 and first[0]["changed_docs"] == int(base[look1].sum()) > 0
    assert first[0]["outcome"] == "then not inferior"
    assert all(r["acc"] == float(base[r["doc_id"]]) for r in out["rows"]["t"])   # the looks now hold the repeats'


def test_a_stop_that_does_not_reproduce_still_rejects_by_default(tmp_path):
    """gate.sequential.on_unreproducible: reject (the default) keeps the stop, and its reason names the
    fault with the number of docs that changed."""
    out, base = _wrong_first(tmp_path, None)
    rep = out["repeat"]
    look_docs = [r["doc_id"] for r in out["rows"]["t"]]
    assert out["stopped"] and out["look"] == 1 and rep["reproduced"] is False and out["unreproducible"] == []
    assert rep["changed_docs"] == int(base[look_docs].sum()) > 0      # every doc the baseline got right
    assert f"; not reproducible: the same {N // 4} docs evaluated again scored {rep['changed_docs']} differently" in out["reason"]


def test_same_compares_logged_values_with_float_tolerance():
    assert sequential.same_value([-16.5, 11], [-16.5 + 1e-9, 11]) and not sequential.same_value([-16.5, 11], [-14.0, 11])
    assert sequential.same_value(1.0, 1) and not sequential.same_value(1.0, 0.0) and sequential.same_value("a", "a")
    assert not sequential.same_value([1.0], [1.0, 2.0]) and not sequential.same_value(None, 1.0)


def test_repeat_asks_each_doc_once_and_compares_the_checked_filter(tmp_path):
    """A generate task logs one row per filter: the repeat asks for each doc once, and counts changes on
    the filter the stop's metric names only."""
    rng = np.random.default_rng(0)
    base = rng.random(N) < 0.9
    write_baseline(tmp_path, base)
    store = VariantResults(tmp_path)
    look = [{**r, "filter": f} for r in rows(np.zeros(8, bool)) for f in ("none", "other")]
    asked = []

    def repeat(docs):
        asked.append(docs)
        return {"t": [{**r, "acc": 1.0 if r["filter"] == "other" else r["acc"]} for r in look]}

    check = {"metric": KEY}
    c = cfg()
    out = sequential.repeat_check(repeat, check, {"t": look}, c.thresholds, store.load(), {"t": store.samples("t")},
                                  ALPHA, c.seed)
    assert asked == [{"t": list(range(8))}] and out["changed_docs"] == 0 and out["docs"] == 8


@pytest.mark.parametrize("policy", ["evaluate_on", None])
def test_the_variants_run_evaluates_afresh_after_an_unreproduced_look(tmp_path, monkeypatch, policy):
    """evalgate.runner with gate.sequential.on_unreproducible: evaluate_on → the full evaluation without the
    request cache (it holds the answers the engine did not reproduce), the count in the quality metrics
    and each such look in unreproducible.json, the first answers in samples_t.unreproduced.jsonl; the
    default (reject) → the stop stands, its reason names the fault."""
    from types import SimpleNamespace

    import evalgate.evaluate as ev
    from evalgate import runner

    rng = np.random.default_rng(0)
    base = rng.random(N) < 0.9
    write_baseline(tmp_path / "baseline", base)
    wrong, right = rows(np.zeros(N, bool)), rows(base)
    asked: set[int] = set()
    full_eval = []

    def evaluate_docs(lm, docs, tasks_index, seed=0, use_cache=None):
        out = {t: [right[i] if i in asked else wrong[i] for i in ids] for t, ids in docs.items()}
        asked.update(i for ids in docs.values() for i in ids)
        return out

    monkeypatch.setattr(ev, "evaluate_docs", evaluate_docs)
    monkeypatch.setattr(ev, "doc_counts", lambda tasks_index, tasks, limit: {t: N for t in tasks})
    monkeypatch.setattr(ev, "evaluate", lambda lm, tasks, tasks_index, out, use_cache=None, **kw:
                        full_eval.append(use_cache) or {KEY: float(base.mean())})
    monkeypatch.setattr(runner, "skipped_tasks", lambda *a: {})
    c = cfg(**({} if policy is None else {"on_unreproducible": policy}))
    assert c.gate["sequential"].get("on_unreproducible", "reject") == (policy or "reject")
    store = VariantResults(tmp_path / "baseline")
    out = VariantResults(tmp_path / "v")
    job = SimpleNamespace(cfg=c, out=out, task_manager=None, baseline=store, variant=SimpleNamespace(name="v"))
    ep = SimpleNamespace(lm_eval_model=lambda: "lm", skipped_output_types=(), request_cache=True)
    metrics, early = runner._evaluate(job, ep, store.load)
    if policy is None:
        assert early is not None and "not reproducible: the same" in early["reason"] and full_eval == []
        # faults.retry_unreproducible: the stop's record says the engine did not reproduce; the phase runs
        # once more (evalgate.schedule / runner.run_serial), its first evaluation set aside
        record = out.read("unreproducible.json")
        assert [(u["phase"], u["look"]) for u in record] == [("look", early["look"])] and record[0]["changed_docs"] > 0
        out.write_samples({"t": wrong[:4]})
        assert runner.retry_alone(c, out) and not runner.retry_alone(SimpleNamespace(
            faults={"retry_unreproducible": False}), out)
        assert out.set_aside_quality() == record[0]["changed_docs"]
        assert out.read("unreproducible.json") is None and out.samples("t") is None
        assert out.read("unreproducible.first.json") == record and (out.path / "first.samples_t.jsonl").exists()
        assert not runner.unreproduced(out) and not runner.retry_alone(c, out)   # once only
        return
    assert early is None and full_eval == [None]          # asked afresh, not from the looks' cache
    record = out.read("unreproducible.json")
    assert [u["look"] for u in record] == [1, 2] and metrics["sequential/unreproducible_docs"] == sum(
        u["changed_docs"] for u in record) > 0
    first = out.samples("t.unreproduced")   # each doc's first answer: the looks' docs, every one wrong
    assert len(first) == N // 2 and first == sorted((wrong[r["doc_id"]] for r in first), key=lambda r: r["doc_id"])


@pytest.mark.parametrize("engine_reproduces", [True, False])
def test_a_failing_check_has_its_differing_docs_asked_again(tmp_path, engine_reproduces):
    """evalgate.runner._reask_failing: after the full evaluation, a gated check that fails has the docs where
    the variant differs from the baseline asked once more (only those). A lossy variant answers them the
    same way (recorded, nothing changed); a flaky engine does not (the changed docs in unreproducible.json
    and `recheck/changed_docs`, which the gate's reason names)."""
    from types import SimpleNamespace

    from evalgate import runner
    from evalgate.gate import decide

    base = np.ones(N, bool)
    write_baseline(tmp_path / "baseline", base)
    var = base.copy()
    var[:40] = False                                   # 10 points lost: the check fails
    out = VariantResults(tmp_path / "v")
    out.write_samples({"t": rows(var)})
    out.write_lm_eval({"higher_is_better": {"t": {"acc": True}}})
    asked = []

    def evaluate_docs(docs):
        asked.append(docs)
        again = var if engine_reproduces else base
        return {t: [rows(again)[i] for i in ids] for t, ids in docs.items()}

    c = cfg()
    store = VariantResults(tmp_path / "baseline")
    job = SimpleNamespace(cfg=c, out=out, baseline=store, variant=SimpleNamespace(name="v"))
    quality = {KEY: float(var.mean())}
    got = runner._reask_failing(job, evaluate_docs, store.load(), quality, ["t", "u"])
    assert asked == [{"t": list(range(40))}]           # only the docs that differ from the baseline's
    assert got == {"recheck/docs": 40.0, "recheck/changed_docs": 0.0 if engine_reproduces else 40.0}
    record = out.read("unreproducible.json")
    if engine_reproduces:
        assert record is None
    else:
        assert record == [{"phase": "gate", "task": "t", "metric": KEY, "docs": 40, "changed_docs": 40,
                           "changed": list(range(40))}]
    c2 = parse({**c.raw, "variants": {"v": {}}})
    verdict = decide(c2, {"baseline": store.load(), "v": {**out.load(), "status": {"ok": True},
                                                          "metrics": {**quality, **got}}})["variants"]["v"]
    assert verdict["verdict"] == "reject"
    assert ("not reproducible: 40 of the 40 docs" in verdict["reason"]) is (not engine_reproduces)
    # a variant that passes is not asked again
    asked.clear()
    out.write_samples({"t": rows(base)})
    assert runner._reask_failing(job, evaluate_docs, store.load(), {KEY: 1.0}, ["t"]) == {} and asked == []
    # the second evaluation of faults.retry_unreproducible passes: accepted, with the first one's warning
    ok = decide(c2, {"baseline": store.load(), "v": {**out.load(), "status": {"ok": True}, "metrics": {
        KEY: 1.0, "retry/first_unreproducible_docs": 26.0}}})["variants"]["v"]
    assert ok["verdict"] == "accept" and ok["warnings"] == [ok["warnings"][0]]
    assert "first evaluation was not reproducible (26 docs" in ok["reason"]
