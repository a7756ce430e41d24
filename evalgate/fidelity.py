"""Fidelity against the baseline on a fixed reference text set: how far the variant's next-token
distributions and greedy answers move, whatever the task scores say.

Each run@<variant> stores its per-position top-k log-probs (`fidelity.npz`); the gate compares them
with the baseline's. On the `hf` engine k covers the whole vocabulary, so KL(baseline ‖ variant) is
exact. Through a server (vLLM) only the top-k prompt log-probs come back: the KL is then *truncated*
to the baseline's top-k tokens, and a token missing from the variant's top-k gets the variant's k-th
log-prob (an upper bound), so the truncated KL is a lower bound of the full one (`kl_truncated` = 1).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HIGHER_IS_BETTER = {"kl_mean": False, "kl_p99": False, "top1_agreement": True, "answer_flip_rate": False}


def save(records: list[dict], path: Path) -> None:
    if not records:
        return
    np.savez_compressed(path, top_ids=np.concatenate([r["top_ids"] for r in records]).astype(np.int32),
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


def answer_flips(base_dir: Path, var_dir: Path, generate_tasks: list[str]) -> dict[str, float]:
    """Share of generate_until docs whose filtered greedy answer differs from the baseline's."""
    out, flips, total = {}, 0, 0
    for task in generate_tasks:
        def answers(d):
            f = d / f"samples_{task}.jsonl"
            if not f.exists():
                return {}
            rows = (json.loads(line) for line in open(f))
            return {(r["doc_id"], r.get("filter")): json.dumps(r["filtered_resps"]) for r in rows}

        a, b = answers(base_dir), answers(var_dir)
        keys = sorted(set(a) & set(b))
        if not keys:
            continue
        n = sum(a[k] != b[k] for k in keys)
        out[f"{task}/answer_flip_rate"] = n / len(keys)
        flips, total = flips + n, total + len(keys)
    if total:
        out["answer_flip_rate"] = flips / total
    return out


def fidelity_metrics(base_dir: Path, var_dir: Path, logprobs_only: bool = False, flips_only: bool = False
                     ) -> dict[str, float]:
    """`fidelity/*` metrics of one variant against the baseline, from the files both runs wrote:
    the next-token comparison (`logprobs_only`: before any evaluation, the cheap screen) and the
    greedy answer flips (`flips_only`: after lm-eval wrote the samples)."""
    out = {}
    if not flips_only and (base_dir / "fidelity.npz").exists() and (var_dir / "fidelity.npz").exists():
        out.update(compare_logprobs(base_dir / "fidelity.npz", var_dir / "fidelity.npz"))
    if not logprobs_only:
        cfgs = json.loads((base_dir / "lm_eval.json").read_text()).get("configs", {}) if (
            base_dir / "lm_eval.json").exists() else {}
        gen = [t for t, c in cfgs.items() if c.get("output_type") == "generate_until"]
        out.update(answer_flips(base_dir, var_dir, gen))
    return {f"fidelity/{k}": v for k, v in out.items()}


# the baseline against itself: what a fidelity threshold's loss is measured from
IDEAL = {"kl_mean": 0.0, "kl_p99": 0.0, "top1_agreement": 1.0, "answer_flip_rate": 0.0}


def screen(cfg, metrics: dict[str, float]) -> dict | None:
    """The cheap check before the expensive ones: the first `fidelity/*` threshold of gate.quality this
    variant already breaks, as an early-rejection record (None: go on). Point estimates, as in the gate."""
    from evalgate.gate import point_check

    for th in cfg.thresholds:
        if not th.metric.startswith("fidelity/") or th.metric not in metrics:
            continue
        name = th.metric.rsplit("/", 1)[-1]
        ideal = IDEAL.get(name, 0.0)
        row = point_check(th, th.metric, ideal, metrics[th.metric], HIGHER_IS_BETTER.get(name, False))
        if not row["passed"]:
            return {"kind": "fidelity", "reason": f"fidelity screen: {row['reason']} (not evaluated or profiled further)",
                    "check": row}
    return None
