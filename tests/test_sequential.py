"""Sequential early rejection: the schedule, the stop through the real `sequential.run` on lm-eval-shaped
samples, and its error rates and savings by simulation (planted per-sample flips, as in test_stats)."""
import json

import numpy as np

from evalgate import sequential
from evalgate.config import parse
from evalgate.gate import paired_test
from test_stats import MARGIN, N, planted

TRIALS, LOOKS, ALPHA = 300, [0.25, 0.5], 0.01


def cfg(looks=LOOKS, alpha=ALPHA):
    return parse({"model": {"source": "local", "id": "m"}, "engine": {"name": "hf"},
                  "workload": {"source": "tasks", "tasks": ["t"], "max_tokens": 4},
                  "eval": {"tasks": ["t"]}, "baseline": {}, "variants": {"v": {}},
                  "gate": {"quality": {"t/acc": {"max_loss_abs": MARGIN}},
                           "sequential": {"enabled": True, "looks": looks, "alpha": alpha}}})


def rows(outcomes):
    return [{"doc_id": i, "filter": "none", "acc": float(x)} for i, x in enumerate(outcomes)]


def write_baseline(d, outcomes):
    d.mkdir(parents=True, exist_ok=True)
    (d / "status.json").write_text(json.dumps({"ok": True}))
    (d / "metrics.json").write_text(json.dumps({"lmeval/t/acc/none": float(np.mean(outcomes))}))
    (d / "lm_eval.json").write_text(json.dumps({"higher_is_better": {"t": {"acc": True}}}))
    with open(d / "samples_t.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows(outcomes))


def simulate(c, d, base, var):
    """One variant through sequential.run; the docs it asks for are served from `var`."""
    asked = []

    def evaluate_docs(docs):
        asked.append(docs)
        return {"t": [rows(var)[i] for i in docs["t"]]}

    write_baseline(d, base)
    return sequential.run(evaluate_docs, {"t": len(var)}, c, d), asked


def test_schedule_is_growing_seeded_prefixes():
    s = sequential.schedule({"a": 400, "b": 10}, [0.25, 0.5], seed=0)
    assert [len(x["a"]) for x in s] == [100, 200] and [len(x["b"]) for x in s] == [3, 5]
    assert set(s[0]["a"]) < set(s[1]["a"])                            # each look extends the last
    assert s == sequential.schedule({"a": 400, "b": 10}, [0.25, 0.5], seed=0)
    assert s[0]["a"] != list(range(100))                              # shuffled, not the first docs
    assert sequential.schedule({"a": 400}, [0.25], seed=0)[0]["a"] == s[0]["a"]  # per-task seed


def test_broken_variant_stops_at_the_first_look(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.random(N) < 0.9
    out, asked = simulate(cfg(), tmp_path, base, np.zeros(N, bool))
    assert out["stopped"] and out["look"] == 1 and out["docs_evaluated"] == N // 4
    assert len(asked) == 1 and len(asked[0]["t"]) == N // 4          # the rest was never asked for
    assert "→ inferior" in out["reason"] and out["check"]["test"]["n"] == N // 4


def test_each_look_asks_only_for_new_docs(tmp_path):
    rng = np.random.default_rng(1)
    base = rng.random(N) < 0.9
    out, asked = simulate(cfg(), tmp_path, base, base.copy())
    assert not out["stopped"] and out["docs_evaluated"] == N // 2
    assert [len(a["t"]) for a in asked] == [N // 4, N // 4] and not set(asked[0]["t"]) & set(asked[1]["t"])


def _trials(loss, seed, tmp_path):
    """Per trial: stopped?, docs evaluated, and the whole procedure's verdict (a stop rejects; otherwise
    the gate's test on all N samples at α = 0.05 decides)."""
    rng, c, out = np.random.default_rng(seed), cfg(), []
    for _ in range(TRIALS):
        base, var = planted(rng, loss)
        seq, _ = simulate(c, tmp_path, base, var)
        accepted = not seq["stopped"] and paired_test(base.astype(float), var.astype(float), "acc", MARGIN,
                                                      True, 0.05).verdict == "non-inferior"
        out.append((seq["stopped"], seq["docs_evaluated"] if seq["stopped"] else N, accepted))
    stopped, docs, accepted = (np.array(x) for x in zip(*out))
    return stopped.mean(), docs.mean(), accepted.mean()


def test_a_variant_at_the_margin_is_rarely_stopped_and_false_accepts_stay_below_5pct(tmp_path):
    stop, _, acc = _trials(MARGIN, seed=21, tmp_path=tmp_path)
    assert stop <= 2 * ALPHA, stop          # Bonferroni over the looks keeps wrong stops at ≤ α (0.7 % here)
    assert acc <= 0.05, acc                 # a stop never accepts: the gate's false-accept rate holds


def test_power_at_twice_the_margin_stays_at_least_80pct(tmp_path):
    _, _, acc = _trials(2 * MARGIN, seed=22, tmp_path=tmp_path)
    assert 1 - acc >= 0.80, acc


def test_a_clearly_broken_variant_is_stopped_early_and_saves_most_docs(tmp_path):
    stop, docs, _ = _trials(8 * MARGIN, seed=23, tmp_path=tmp_path)   # 16 points lost
    assert stop >= 0.95, stop
    assert docs <= 0.35 * N, docs           # on average about a quarter of the docs evaluated


def test_a_lossless_variant_is_not_stopped(tmp_path):
    stop, _, acc = _trials(0.0, seed=24, tmp_path=tmp_path)
    assert stop == 0.0 and acc >= 0.7
