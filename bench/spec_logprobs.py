"""Do a draft-speculative vLLM server's log-likelihoods equal the plain server's?

Greedy speculation is lossless and prompt log-probs come from the target model alone, so a `draft` server
must return the baseline's prompt log-probs and greedy answers (up to bf16 batch noise). In scheduled GPU
runs it sometimes did not: `draft` was stopped at a sequential look on fx_ppl word perplexity (+1.08 in
h100-2026-11-26-15, +2.43 in -22) while its fidelity screen on the same server saw KL ≈ 1e-5, and the
other runs of the same fixture gave fx_ppl equal to the baseline's to every digit. This serves one model
plainly and with draft speculation side by side, sends both the same prompts (16 to 1,500 tokens: the
CUDA-graph capture limit is 512) at concurrency 1, 16 and 64, then (`--tasks`) lm-eval's fx_ppl, fx_add,
fx_copy and fx_count `--lm-eval-rounds` times, and counts what differs from the plain server's first
round. The plain server's own later rounds are the noise floor.

    python3 bench/spec_logprobs.py [--model DIR --draft DIR [--tasks DIR]] [--out FILE.json]

On the GPU host with the bundle installed (gpu/README.md). Without --model it builds a random-weight
target and draft of the GPU fixture's shapes with the toy tokenizer.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OPTS = {"seed": 0, "kv_cache_memory_gb": 2, "server_overhead_gb": 3, "max_model_len": 4096, "start_timeout_s": 900,
        "engine_args": {"max_num_seqs": 256}}
DRAFT = {"speculative": {"method": "draft", "num_tokens": 4}}
HELDOUT = {"add": 0, "copy": 0, "recall": 0, "sentence": 0}


def _corpus(seed: int = 0):
    """The toy corpus (no held-out items: only its lines are wanted)."""
    from evalgate.toymodel.corpus import Corpus

    return Corpus(seed, HELDOUT, add_digits=[1, 3, 1], copy_words=[3, 12], recall_pairs=[2, 4])


def prompt_texts(tok, n: int, seed: int = 0, longest: int = 1500) -> list[str]:
    """n texts of the toy corpus's lines, from 16 to `longest` tokens (the CUDA-graph capture limit is
    512: prompts below it run in graphs, those above eagerly)."""
    lines = _corpus(seed).tokenizer_text(20000)
    rng = np.random.default_rng(seed)
    lengths = np.geomspace(16, longest, n).astype(int)
    texts, j = [], 0
    for want in rng.permutation(lengths):
        text = ""
        while len(tok(text)["input_ids"]) < want:
            text += lines[j % len(lines)] + "\n"
            j += 1
        texts.append(text)
    return texts


def differences(ref: list[np.ndarray], got: list[np.ndarray]) -> np.ndarray:
    """Per prompt: the largest |difference| of the top-1 log-prob over its positions (inf: lengths differ)."""
    return np.array([float(np.max(np.abs(a - b))) if a.shape == b.shape and a.size else float("inf")
                     for a, b in zip(ref, got)])


def summary(diff: np.ndarray, lengths: list[int], tol: float) -> dict:
    bad = diff > tol
    return {"prompts": int(diff.size), "differ": int(bad.sum()), "max_diff": float(diff.max()),
            "p50_diff": float(np.median(diff)),
            "differ_at_most_512_tokens": int(sum(b for b, n in zip(bad, lengths) if n <= 512)),
            "differ_over_512_tokens": int(sum(b for b, n in zip(bad, lengths) if n > 512))}


def lm_eval_rounds(eps: dict, tasks_dir: str, rounds: int, tol: float,
                   tasks=("fx_ppl", "fx_add", "fx_copy", "fx_count")) -> dict:
    """The path where the faults were seen: lm-eval through each server (every server at once, `rounds`
    times) against the plain server's first round, per doc: fx_ppl's log-likelihood (a difference over
    `tol` nats counts) and the greedy answers of the generate tasks (any change counts: greedy speculation
    is lossless, so a changed answer is the speculation's or the batch numerics')."""
    from evalgate.evaluate import doc_counts, evaluate_docs, task_manager

    tm = task_manager(list(tasks), tasks_dir)
    docs = {t: list(range(n)) for t, n in doc_counts(tm, list(tasks)).items()}

    def values(ep) -> dict:
        rows = evaluate_docs(ep.lm_eval_model(), docs, tm)
        return {(t, r["doc_id"]): (float(r["word_perplexity"][0]) if "word_perplexity" in r
                                   else json.dumps(r["filtered_resps"])) for t in rows for r in rows[t]}

    def differs(x, y) -> bool:
        return abs(x - y) > tol if isinstance(x, float) and isinstance(y, float) else x != y

    ref, out = values(eps["plain"]), {}
    for k in range(rounds):
        with ThreadPoolExecutor(len(eps)) as pool:
            got = dict(zip(eps, pool.map(values, eps.values())))
        for n, g in got.items():
            row = {}
            for t in tasks:
                keys = [d for d in ref if d[0] == t]
                bad = [d[1] for d in keys if d not in g or differs(ref[d], g[d])]
                row[t] = {"docs": len(keys), "differ": len(bad), "first_docs": bad[:5]}
            out.setdefault(n, []).append(row)
        print(f"lm-eval round {k}", json.dumps({n: {t: v[-1][t]["differ"] for t in tasks} for n, v in out.items()}),
              flush=True)
    return out


def random_models(d: Path) -> tuple[str, str]:
    """A random target and draft with the GPU fixture's shapes (conf/fixture/gpu.yaml) and the toy tokenizer."""
    import torch
    import yaml

    from evalgate.toymodel.tokenizer import train_tokenizer
    from evalgate.toymodel.train import new_model

    fx = yaml.safe_load((ROOT / "conf/fixture/gpu.yaml").read_text())
    tok = train_tokenizer(_corpus().tokenizer_text(4000), fx["tokenizer"]["vocab_size"])
    for name in ("target", "draft"):
        torch.manual_seed(0)
        m = new_model(fx[name], tok, name).to(torch.bfloat16)
        m.save_pretrained(d / name)
        tok.save_pretrained(d / name)
    return str(d / "target"), str(d / "draft")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model"), ap.add_argument("--draft")
    ap.add_argument("--prompts", type=int, default=192)
    ap.add_argument("--tol", type=float, default=0.1, help="nats; bf16 batch noise is far below")
    ap.add_argument("--out", default="spec_logprobs.json")
    ap.add_argument("--tasks", help="the fixture's lm-eval tasks (fixtures/tasks): fx_ppl through lm-eval too")
    ap.add_argument("--lm-eval-rounds", type=int, default=4)
    ap.add_argument("--doc-tol", type=float, default=0.5, help="nats per document (a sum over its tokens)")
    a = ap.parse_args()
    import vllm
    from transformers import AutoTokenizer

    from evalgate.config import ModelSpec, parse_variant
    from evalgate.engines import get_engine
    from evalgate.schedule import memory_shares

    work = Path(tempfile.mkdtemp(prefix="spec_logprobs_"))
    model, draft = (a.model, a.draft) if a.model else random_models(work)
    spec = ModelSpec(source="local", id=model, draft=draft, dtype="bfloat16")
    tok = AutoTokenizer.from_pretrained(model)
    texts = prompt_texts(tok, a.prompts)
    lengths = [len(tok(t)["input_ids"]) for t in texts]
    variants = {"plain": parse_variant("baseline", {}), "draft": parse_variant("draft", DRAFT)}
    engine = get_engine("vllm", OPTS)
    _, total = engine.device_memory()
    shares = memory_shares({n: engine.memory_need(spec, v) for n, v in variants.items()}, total)
    servers, t0 = {}, time.perf_counter()
    try:
        for n, v in variants.items():
            (work / "servers" / n).mkdir(parents=True)
            servers[n] = engine.start(spec, v, work / "servers" / n, shares[n])
        eps = {n: s.wait() for n, s in servers.items()}
        print(f"{len(eps)} servers up in {time.perf_counter() - t0:.0f} s", flush=True)

        def top1(ep, conc: int, subset: list[int]) -> list[np.ndarray]:
            with ThreadPoolExecutor(conc) as pool:
                recs = list(pool.map(lambda i: ep.prompt_logprobs([texts[i]], 1)[0], subset))
            return [r["top_logprobs"][:, 0] for r in recs]

        everything = list(range(len(texts)))
        rounds = [("c1", 1, everything[::3]), ("c16", 16, everything), ("c64", 64, everything), ("c16_again", 16, everything)]
        ref = dict(enumerate(top1(eps["plain"], 16, everything)))
        out = {"vllm": vllm.__version__, "tol_nats": a.tol, "prompt_tokens": lengths, "rounds": {}}
        for name, conc, subset in rounds:
            with ThreadPoolExecutor(len(eps)) as pool:   # every server at once: they share the GPU, not the result
                got = dict(zip(eps, pool.map(top1, eps.values(), [conc] * len(eps), [subset] * len(eps))))
            sub_len = [lengths[i] for i in subset]
            out["rounds"][name] = {n: summary(differences([ref[i] for i in subset], g), sub_len, a.tol) for n, g in got.items()}
            print(name, json.dumps(out["rounds"][name]), flush=True)
        if a.tasks:
            out["lm_eval"] = lm_eval_rounds(eps, a.tasks, a.lm_eval_rounds, a.doc_tol)
    finally:
        for s in servers.values():
            s.stop()
    Path(a.out).write_text(json.dumps(out, indent=1))
    for n in servers:   # beside the figures: what each server said (warnings, the speculation's acceptance)
        shutil.copy(work / "servers" / n / "server.log", Path(a.out).with_name(f"{Path(a.out).stem}-{n}.log"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
