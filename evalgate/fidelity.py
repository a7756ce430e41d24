"""Fidelity against the baseline on a fixed reference text set: how far the variant's next-token
distributions and greedy answers move, whatever the task scores say.

Each variant's run stores its per-position top-k log-probs (`fidelity.npz`) and compares them with
the baseline's there, in its quality phase (the gate only reads the resulting `fidelity/*` metrics).
On the `hf` engine k covers the whole vocabulary, so KL(baseline ‖ variant) is exact. Through a server
(vLLM) only the top-k prompt log-probs come back: the KL is then *truncated* to the baseline's top-k
tokens, and a token missing from the variant's top-k gets the variant's k-th log-prob (an upper bound),
so the truncated KL is a lower bound of the full one (`kl_truncated` = 1).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

HIGHER_IS_BETTER = {"kl_mean": False, "kl_p99": False, "top1_agreement": True, "answer_flip_rate": False}


def save(records: list[dict], path: Path) -> None:
    if not records:
        return
    from evalgate.results import atomic

    with atomic(Path(path), "wb") as f:  # whole or not at all (evalgate.results)
        np.savez_compressed(f, top_ids=np.concatenate([r["top_ids"] for r in records]).astype(np.int32),
                            top_logprobs=np.concatenate([r["top_logprobs"] for r in records]).astype(np.float32),
                            lengths=np.array([len(r["top_ids"]) for r in records]), vocab_size=records[0]["vocab_size"])


def _kl_rows(b_ids, b_lp, v_ids, v_lp) -> np.ndarray:
    """KL(base ‖ variant) per position over the base's listed tokens (all of them when k = vocab)."""
    out = np.empty(len(b_ids))
    for i in range(len(b_ids)):
        v = dict(zip(v_ids[i].tolist(), v_lp[i].tolist()))
        floor = float(np.min(v_lp[i][np.isfinite(v_lp[i])]))
        q = np.array([v.get(t, floor) for t in b_ids[i].tolist()])
        p = np.exp(b_lp[i])
        ok = np.isfinite(b_lp[i])
        out[i] = float(np.sum(p[ok] * (b_lp[i][ok] - q[ok])))
    return out


def compare_logprobs(base: Path, var: Path) -> dict[str, float]:
    b, v = np.load(base), np.load(var)
    if not np.array_equal(b["lengths"], v["lengths"]):
        raise ValueError("fidelity: the two runs saw different reference texts")
    k, vocab = b["top_ids"].shape[1], int(b["vocab_size"])
    kl = _kl_rows(b["top_ids"], b["top_logprobs"], v["top_ids"], v["top_logprobs"])
    kl = np.maximum(kl, 0.0)  # rounding of two equal distributions can give −1e-7
    return {"kl_mean": float(kl.mean()), "kl_p99": float(np.percentile(kl, 99)),
            "top1_agreement": float(np.mean(b["top_ids"][:, 0] == v["top_ids"][:, 0])),
            "kl_truncated": float(k < vocab), "positions": float(len(kl))}


def answer_flips(base: dict[str, dict], var: dict[str, dict]) -> dict[str, float]:
    """Share of generate_until docs whose filtered greedy answer differs from the baseline's. `base`,
    `var`: per task, (doc_id, filter) → the answer (`VariantResults.answers`)."""
    out, flips, total = {}, 0, 0
    for task, a in base.items():
        b = var.get(task) or {}
        keys = sorted(set(a) & set(b))
        if not keys:
            continue
        n = sum(a[k] != b[k] for k in keys)
        out[f"{task}/answer_flip_rate"] = n / len(keys)
        flips, total = flips + n, total + len(keys)
    if total:
        out["answer_flip_rate"] = flips / total
    return out


def fidelity_metrics(base, var, logprobs_only: bool = False, flips_only: bool = False) -> dict[str, float]:
    """`fidelity/*` metrics of one variant against the baseline, from what both runs stored (`base`,
    `var`: their `VariantResults`): the next-token comparison (`logprobs_only`: before any evaluation,
    the cheap screen) and the greedy answer flips (`flips_only`: after lm-eval wrote the samples)."""
    out = {}
    if not flips_only and base.fidelity_file.exists() and var.fidelity_file.exists():
        out.update(compare_logprobs(base.fidelity_file, var.fidelity_file))
    if not logprobs_only:
        tasks = base.generate_tasks()
        out.update(answer_flips({t: base.answers(t) for t in tasks}, {t: var.answers(t) for t in tasks}))
    return {f"fidelity/{k}": v for k, v in out.items()}


# the baseline against itself: what a fidelity threshold's loss is measured from
IDEAL = {"kl_mean": 0.0, "kl_p99": 0.0, "top1_agreement": 1.0, "answer_flip_rate": 0.0}
