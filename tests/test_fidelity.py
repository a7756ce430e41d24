"""Fidelity against the baseline on fixed numbers: KL of next-token distributions (exact and truncated to the
top-k), top-1 agreement, greedy answer flips, and how the gate picks them up."""
import json
import math

import numpy as np
import pytest

from evalgate import fidelity
from evalgate.config import Threshold
from evalgate.gate import fidelity_screen
from evalgate.results import VariantResults

L = np.log


def rec(ids, lps, vocab):
    return {"top_ids": np.array(ids), "top_logprobs": np.array(lps, float), "vocab_size": vocab}


def write(d, records, samples=None, configs=None):
    d.mkdir(parents=True, exist_ok=True)
    if records is not None:
        fidelity.save(records, d / "fidelity.npz")
    for task, rows in (samples or {}).items():
        (d / f"samples_{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if configs is not None:
        (d / "lm_eval.json").write_text(json.dumps({"configs": configs}))
    return d


def answers(pairs, flt="strict"):
    return [{"doc_id": i, "filter": flt, "filtered_resps": [a]} for i, a in pairs]


def test_save_concatenates_records(tmp_path):
    recs = [rec([[0, 1, 2, 3], [1, 0, 2, 3]], [[-1, -2, -3, -4]] * 2, 4), rec([[3, 2, 1, 0]] * 3, [[-1, -2, -3, -4]] * 3, 4)]
    fidelity.save(recs, tmp_path / "f.npz")
    z = np.load(tmp_path / "f.npz")
    assert z["top_ids"].dtype == np.int32 and z["top_logprobs"].dtype == np.float32
    assert z["top_ids"].shape == (5, 4) and z["top_ids"][2].tolist() == [3, 2, 1, 0]
    assert z["lengths"].tolist() == [2, 3] and int(z["vocab_size"]) == 4
    fidelity.save([], tmp_path / "none.npz")
    assert not (tmp_path / "none.npz").exists()


def test_exact_kl_on_the_whole_vocabulary(tmp_path):
    p, q = [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]
    base = rec([[0, 1, 2], [0, 1, 2], [1, 0, 2]], [L(p), L(p), L([0.6, 0.3, 0.1])], 3)
    # the variant lists the same tokens in its own order (most likely first)
    var = rec([[2, 1, 0], [0, 1, 2], [1, 0, 2]], [L(q[::-1]), L(p), L([0.3, 0.6, 0.1])], 3)
    write(tmp_path / "b", [base]), write(tmp_path / "v", [var])
    m = fidelity.compare_logprobs(tmp_path / "b" / "fidelity.npz", tmp_path / "v" / "fidelity.npz")
    kl = [sum(a * math.log(a / b) for a, b in zip(p, q)), 0.0, 0.6 * math.log(2) + 0.3 * math.log(0.5)]
    assert m["kl_mean"] == pytest.approx(np.mean(kl), abs=1e-6)
    s = sorted(kl)
    assert m["kl_p99"] == pytest.approx(s[1] + 0.98 * (s[2] - s[1]), abs=1e-6)   # linear, at 0.99·(n − 1)
    assert m["top1_agreement"] == pytest.approx(2 / 3)                           # position 0: 0 vs 2
    assert m["kl_truncated"] == 0.0 and m["positions"] == 3.0
    assert set(m) == {"kl_mean", "kl_p99", "top1_agreement", "kl_truncated", "positions"}


def test_truncated_kl_gives_a_missing_token_the_variants_floor(tmp_path):
    # top-2 of a 10-token vocabulary; the base's second token (2) is not in the variant's top-2
    base = rec([[1, 2], [4, 5]], [L([0.6, 0.3]), [L(0.7), -np.inf]], 10)
    var = rec([[1, 3], [4, 6]], [L([0.5, 0.2]), [L(0.5), -np.inf]], 10)
    write(tmp_path / "b", [base]), write(tmp_path / "v", [var])
    m = fidelity.compare_logprobs(tmp_path / "b" / "fidelity.npz", tmp_path / "v" / "fidelity.npz")
    first = 0.6 * math.log(0.6 / 0.5) + 0.3 * math.log(0.3 / 0.2)   # floor = the variant's k-th log-prob
    second = 0.7 * math.log(0.7 / 0.5)                               # -inf entries: skipped, never the floor
    assert m["kl_mean"] == pytest.approx((first + second) / 2, rel=1e-5)
    assert m["kl_truncated"] == 1.0 and m["top1_agreement"] == 1.0


def test_negative_kl_from_rounding_is_clipped(tmp_path):
    base = rec([[1, 2], [1, 2]], [L([0.6, 0.3]), L([0.6, 0.3])], 2)
    var = rec([[1, 2], [1, 2]], [L([0.7, 0.35]), L([0.3, 0.6])], 2)  # position 0: "KL" < 0 over a partial list
    write(tmp_path / "b", [base]), write(tmp_path / "v", [var])
    m = fidelity.compare_logprobs(tmp_path / "b" / "fidelity.npz", tmp_path / "v" / "fidelity.npz")
    assert m["kl_mean"] == pytest.approx((0.6 * math.log(2) + 0.3 * math.log(0.5)) / 2, rel=1e-5)


def test_different_reference_texts_are_refused(tmp_path):
    write(tmp_path / "b", [rec([[0, 1]] * 2, [L([0.5, 0.5])] * 2, 2)])
    write(tmp_path / "v", [rec([[0, 1]] * 3, [L([0.5, 0.5])] * 3, 2)])
    with pytest.raises(ValueError, match="^fidelity: the two runs saw different reference texts$"):
        fidelity.compare_logprobs(tmp_path / "b" / "fidelity.npz", tmp_path / "v" / "fidelity.npz")


def test_answer_flips_per_task_and_overall(tmp_path):
    b = write(tmp_path / "b", None, {"a": answers([(0, "1"), (1, "2"), (2, "3"), (3, "4")]) + answers([(0, "x")], "loose"),
                                      "c": answers([(0, "y"), (1, "z")]), "d": answers([(0, "q")])})
    v = write(tmp_path / "v", None, {"a": answers([(0, "1"), (1, "2"), (2, "3"), (3, "5")]) + answers([(0, "x")], "loose"),
                                      "c": answers([(0, "n"), (1, "m"), (2, "extra")]), "d": answers([(5, "q")])})
    def flips(tasks):
        return fidelity.answer_flips({t: VariantResults(b).answers(t) for t in tasks},
                                     {t: VariantResults(v).answers(t) for t in tasks})

    out = flips(["a", "d", "missing", "c"])
    assert out == {"a/answer_flip_rate": pytest.approx(1 / 5), "c/answer_flip_rate": 1.0,
                   "answer_flip_rate": pytest.approx(3 / 7)}            # d: no doc in common, missing: no file
    assert flips(["d", "missing"]) == {}


def test_fidelity_metrics_only_for_generate_tasks_and_npz_on_both_sides(tmp_path):
    r = [rec([[0, 1]], [L([0.5, 0.5])], 2)]
    cfgs = {"a": {"output_type": "generate_until"}, "l": {"output_type": "loglikelihood"}}
    b = write(tmp_path / "b", r, {"a": answers([(0, "1"), (1, "2")]), "l": answers([(0, "1")])}, cfgs)
    v = write(tmp_path / "v", r, {"a": answers([(0, "1"), (1, "3")]), "l": answers([(0, "9")])})
    b, v = VariantResults(b), VariantResults(v)
    m = fidelity.fidelity_metrics(b, v)
    assert m == {"fidelity/kl_mean": 0.0, "fidelity/kl_p99": 0.0, "fidelity/top1_agreement": 1.0,
                 "fidelity/kl_truncated": 0.0, "fidelity/positions": 1.0,
                 "fidelity/a/answer_flip_rate": 0.5, "fidelity/answer_flip_rate": 0.5}
    v.fidelity_file.unlink()
    assert set(fidelity.fidelity_metrics(b, v)) == {"fidelity/a/answer_flip_rate", "fidelity/answer_flip_rate"}
    b.file("lm_eval.json").write_text("{}")                               # no configs: no generate task
    assert fidelity.fidelity_metrics(b, v) == {}
    b.file("lm_eval.json").unlink()
    assert fidelity.fidelity_metrics(b, v) == {}
    assert set(fidelity.fidelity_metrics(v, b)) == set()                  # the variant's npz is gone


def test_the_fidelity_screen_rejects_before_any_evaluation():
    """The variant's run screens its fidelity metrics against gate.quality's fidelity thresholds (point
    estimates against the baseline against itself) before it evaluates or profiles anything."""
    th = (Threshold("fidelity/kl_mean", 0.05, None), Threshold("fidelity/top1_agreement", 0.02, None),
          Threshold("t/acc", 0.02, None))
    assert fidelity_screen(th, {"fidelity/kl_mean": 0.01, "fidelity/top1_agreement": 0.99}) is None
    assert fidelity_screen(th, {}) is None                                 # nothing measured: nothing to screen
    early = fidelity_screen(th, {"fidelity/kl_mean": 0.01, "fidelity/top1_agreement": 0.9})
    assert early["kind"] == "fidelity" and early["check"]["metric"] == "fidelity/top1_agreement"
    assert early["check"]["loss"] == pytest.approx(0.1) and not early["check"]["passed"]
    assert early["reason"].startswith("fidelity screen: fidelity/top1_agreement: 1 → 0.9 (loss 0.1 > 0.02)")
    assert fidelity_screen(th, {"fidelity/kl_mean": 0.2})["check"]["metric"] == "fidelity/kl_mean"
