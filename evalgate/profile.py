"""Load profile of a served variant: a fixed workload, warm-up, repeats; per-request TTFT/TPOT/ITL/E2EL.

The workload (prompts) is built once per pipeline (`stages/workload.py`) so every variant sees the
same requests. Output length is fixed (EOS ignored) so that it does not confound speed.
"""
from __future__ import annotations

import random
import statistics
import time
from pathlib import Path

from tqdm import tqdm

from evalgate.metrics import stat_keys


def requests_at(wl: dict, concurrency: int) -> int:
    """Requests sent at one concurrency level: `num_prompts` × `repeats`, and at least
    `min_requests_per_slot` per concurrent slot, so a high level runs long enough to measure (64
    requests at concurrency 32 lasted ~1 s on an H200: two waves, all ramp-up and tail)."""
    return max(wl["num_prompts"] * wl["repeats"], wl.get("min_requests_per_slot", 0) * concurrency)


def distinct_prompts(wl: dict) -> int:
    """How many different prompts the workload file holds: enough that no level repeats a prompt
    (a repeated prompt would hit vLLM's prefix cache and flatter TTFT)."""
    return max([wl["num_prompts"]] + [wl.get("min_requests_per_slot", 0) * c for c in wl.get("concurrency", [1])])


def build_workload(wl: dict, tm, tokenizer, seed: int) -> list[dict]:
    """Prompts drawn from lm-eval tasks (through the tasks' own `doc_to_text`) plus synthetic ones
    of a fixed token length, in a seeded order."""
    rng = random.Random(seed)
    n = distinct_prompts(wl)
    n_syn = round(n * wl.get("synthetic_fraction", 0.5)) if wl.get("tasks") else n
    prompts: list[dict] = []
    tasks = wl.get("tasks") or []
    if tasks:
        loaded = tm.load_task_or_group(tasks)
        texts = []
        for name in tasks:
            task = loaded[name]
            docs = list(task.eval_docs)
            texts += [(name, task.doc_to_text(d)) for d in docs]
        for name, text in rng.sample(texts, min(n - n_syn, len(texts))):
            prompts.append({"source": name, "prompt": text})
    special = set(tokenizer.all_special_ids)
    vocab = [i for i in range(len(tokenizer)) if i not in special]
    in_len = wl.get("synthetic_input_len", 64)
    for _ in range(n_syn):
        # like vLLM's random dataset: random token ids, decoded to text, re-cut to the target length
        ids = tokenizer(tokenizer.decode(rng.choices(vocab, k=in_len))).input_ids[:in_len]
        prompts.append({"source": "synthetic", "prompt": tokenizer.decode(ids)})
    rng.shuffle(prompts)
    return prompts


def build_reference(fid: dict, tm, seed: int) -> list[str]:
    """Fidelity reference texts: whole documents (prompt + target) of `fid.tasks`, seeded sample."""
    texts = []
    if fid.get("tasks"):
        loaded = tm.load_task_or_group(fid["tasks"])
        for name in fid["tasks"]:
            task = loaded[name]
            for d in task.eval_docs:
                target = task.doc_to_target(d)
                if isinstance(target, str):
                    prompt = task.doc_to_text(d)
                    texts.append(prompt + (task.config.target_delimiter if prompt else "") + target)
    random.Random(seed).shuffle(texts)
    return texts[: fid.get("max_texts", 200)]


def _request_metrics(times: list[float]) -> dict:
    n = len(times)
    return {"ttft": times[0], "e2el": times[-1], "output_tokens": n,
            "tpot": (times[-1] - times[0]) / (n - 1) if n > 1 else None,
            "itl": [b - a for a, b in zip(times, times[1:])]}


def _ms(requests: list[dict], key: str) -> list[float]:
    """All samples of one metric in ms (ITL contributes every gap of every request)."""
    out: list[float] = []
    for q in requests:
        v = q[key]
        out += [1000 * x for x in (v if isinstance(v, list) else [v]) if x is not None]
    return out


def run_profile(endpoint, prompts: list[dict], wl: dict) -> dict:
    """Warm up, then run the workload `repeats` times, `endpoint.batch_size` requests at a time."""
    out_len, bs = wl["output_len"], endpoint.batch_size
    prompts = prompts[:wl.get("num_prompts", len(prompts))]  # the file may hold more, for other levels
    for i in range(0, wl["warmup"], bs):
        endpoint.generate_batch([p["prompt"] for p in prompts[i:i + bs]], out_len)
    requests, runs = [], []
    with tqdm(total=wl["repeats"] * len(prompts), desc="profile", unit="req") as bar:
        for r in range(wl["repeats"]):
            t0, toks = time.perf_counter(), 0
            for i in range(0, len(prompts), bs):
                batch = prompts[i:i + bs]
                for j, (p, g) in enumerate(zip(batch, endpoint.generate_batch([p["prompt"] for p in batch], out_len))):
                    m = _request_metrics(g.token_times)
                    toks += m["output_tokens"]
                    requests.append({"repeat": r, "index": i + j, "source": p["source"],
                                     "prompt_tokens": g.prompt_tokens, **m})
                bar.update(len(batch))
            wall = time.perf_counter() - t0
            runs.append({"duration_s": wall, "output_throughput": toks / wall, "request_throughput": len(prompts) / wall})
    summary: dict[str, float] = {"completed": len(requests), "concurrency": bs}
    for metric in ("ttft", "tpot", "itl", "e2el"):
        summary.update(stat_keys(metric, _ms(requests, metric)))
    for key in ("output_throughput", "request_throughput"):
        vals = [run[key] for run in runs]
        summary[key] = statistics.fmean(vals)
        summary[f"{key}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    summary.update(endpoint.stats())
    return {"summary": summary, "runs": runs, "requests": requests}


BENCH_KEYS = ("completed", "duration", "request_throughput", "output_throughput", "total_token_throughput",
              "spec_decode_acceptance_rate", "spec_decode_acceptance_length")


def from_bench(results: dict[int, dict], headline: int) -> dict:
    """`vllm bench serve` results per concurrency → our summary: the headline level unprefixed,
    every level also as `c<N>/<metric>`. vLLM's keys are our keys (see evalgate.metrics)."""
    summary: dict[str, float] = {}
    for c, res in results.items():
        keep = {k: v for k, v in res.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                and (k in BENCH_KEYS or k.endswith("_ms"))}
        keep = {k.replace("p50_", "median_") if k.startswith("p50_") else k: v for k, v in keep.items()}
        summary.update({f"c{c}/{k}": v for k, v in keep.items()})
        if c == headline:
            summary.update(keep)
            summary["concurrency"] = c
    return summary


def profile_endpoint(endpoint, prompts: list[dict], wl: dict, dataset: Path, out_dir: Path) -> dict:
    """The engine's own benchmark where it has one (vLLM), else the generic loop; plus engine stats."""
    bench = endpoint.bench(dataset, wl, out_dir)
    if bench is None:
        return run_profile(endpoint, prompts, wl)
    levels = list(bench)
    summary = from_bench(bench, wl.get("headline_concurrency", levels[-1]))
    summary.update(endpoint.stats())
    return {"summary": summary, "bench": {str(c): r for c, r in bench.items()}}
