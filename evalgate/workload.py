"""The requests every variant is profiled with, built once per pipeline (`evalgate workload`).

A workload file is JSONL, one request per line: `prompt`, `max_tokens` (a cap: the request ends at
EOS or at one of its `stop` sequences first, as a real client's would), `stop`, and `source` (where
the prompt came from). The kinds (`conf/workload/`):

- `tasks`  prompts of lm-eval tasks, through the tasks' own `doc_to_text`, each with the task's stop
           sequences (`until`) and the workload's `max_tokens` cap (a client does not know the answer's
           length; the model's EOS ends the request); optionally behind one long common
           prefix (`prefix_tokens`: a system prompt, so prefix caching has something to reuse);
- `random` random token ids of a fixed length with EOS ignored: the capacity stress test of
           `vllm bench serve --dataset-name random`, kept for capacity, not realism;
- `file`   a user's own JSONL (`prompt` [, `max_tokens`, `stop`]) or ShareGPT JSON (the first human
           turn of each conversation becomes the prompt, the first answer's length its cap).

The file holds `requests_needed(load)` distinct prompts, so no load level repeats one (a repeated
prompt would hit the prefix cache and flatter TTFT). Bad user files get a one-line ConfigError
naming the file, the line and what is wrong, before any model loads.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from evalgate.config import ConfigError


def requests_needed(load: dict) -> int:
    """Distinct prompts a sweep may send in one level at most (every level reads from the start)."""
    return int(load.get("requests", {}).get("max", 64))


def build(workload_spec: dict, load: dict, task_manager, tokenizer, seed: int) -> list[dict]:
    """The workload's requests, in one seeded order shared by every variant."""
    n = requests_needed(load)
    source = workload_spec["source"]
    if source == "file":
        rows = read_user_file(Path(workload_spec["path"]), workload_spec.get("format", "auto"),
                              workload_spec.get("max_tokens", 256))
    elif source == "random":
        rows = _random(tokenizer, n, workload_spec["input_len"], workload_spec["output_len"], seed)
    else:
        rows = _from_tasks(workload_spec, task_manager, tokenizer, n, seed)
    if not rows:
        raise ConfigError(f"workload: {workload_spec.get('name', source)!r} produced no requests")
    if len(rows) < n:  # cycle a small user file rather than refuse it; every variant still gets the same
        rows = [dict(r, index=i) for i, r in enumerate((rows * (n // len(rows) + 1))[:n])]
    return [dict(r, index=i) for i, r in enumerate(rows[:n])]


def _from_tasks(workload_spec: dict, task_manager, tokenizer, n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    loaded = task_manager.load(list(workload_spec["tasks"]))["tasks"]
    per_task: list[list[dict]] = []
    for name in workload_spec["tasks"]:
        task = loaded[name]
        gen = dict(task.config.generation_kwargs or {})
        until = gen.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        cap = int(workload_spec.get("max_tokens", 256))   # a client's cap, not the answer's length: EOS ends the request
        docs = list(task.eval_docs)
        rows = [{"source": name, "prompt": task.doc_to_text(d), "max_tokens": cap, "stop": until} for d in docs]
        rng.shuffle(rows)
        per_task.append(rows)
    # round-robin over the tasks: every prefix of the file has the same task mix
    mixed = [r for group in zip(*per_task) for r in group] if per_task else []
    longest = max(map(len, per_task))
    if len(mixed) < n and longest > min(map(len, per_task)):  # tasks of unequal size: the rest, shuffled
        rest = [r for rows in per_task for r in rows[min(map(len, per_task)):]]
        rng.shuffle(rest)
        mixed += rest
    prefix = _prefix(workload_spec, tokenizer, seed)
    if prefix:
        mixed = [dict(r, prompt=prefix + r["prompt"], source=f"{r['source']}+prefix") for r in mixed]
    return mixed


def _prefix(workload_spec: dict, tokenizer, seed: int) -> str:
    """One long common prefix (a system prompt) of about `prefix_tokens` tokens: `prefix_text` if given,
    else sentences of the fixture's own filler (`prefix_text` for a real model)."""
    want = int(workload_spec.get("prefix_tokens") or 0)
    if not want:
        return ""
    text = workload_spec.get("prefix_text")
    if not text:
        from evalgate.toymodel.corpus import Corpus

        rng = random.Random(f"{seed}:prefix")
        text = " ".join(Corpus._sentence(rng) for _ in range(want))  # ≈ 8 tokens a sentence: cut below
    ids = tokenizer(text).input_ids[:want]
    return tokenizer.decode(ids).rstrip() + " "


def _random(tokenizer, n: int, input_len: int, output_len: int, seed: int) -> list[dict]:
    """Like vLLM's random dataset: random token ids, decoded to text, re-cut to the target length."""
    rng = random.Random(seed)
    special = set(tokenizer.all_special_ids)
    vocab = [i for i in range(len(tokenizer)) if i not in special]
    rows = []
    for _ in range(n):
        ids = tokenizer(tokenizer.decode(rng.choices(vocab, k=input_len))).input_ids[:input_len]
        rows.append({"source": "random", "prompt": tokenizer.decode(ids), "max_tokens": output_len, "stop": []})
    return rows


def read_user_file(path: Path, fmt: str = "auto", default_max_tokens: int = 256) -> list[dict]:
    """A user's workload: JSONL (`prompt` [, `max_tokens`, `stop`]) or ShareGPT JSON. One-line errors."""
    where = f"workload.path: {path}"
    if not path.is_file():
        raise ConfigError(f"{where}: not found")
    text = path.read_text(errors="replace")
    if fmt == "auto":
        fmt = "sharegpt" if text.lstrip().startswith("[") else "jsonl"
    rows = []
    if fmt == "sharegpt":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}: not valid JSON (line {e.lineno}: {e.msg})") from None
        if not isinstance(data, list):
            raise ConfigError(f"{where}: a ShareGPT file is a JSON list of conversations")
        for i, conv in enumerate(data):
            turns = conv.get("conversations") if isinstance(conv, dict) else None
            if not isinstance(turns, list) or len(turns) < 1 or not isinstance(turns[0], dict) or "value" not in turns[0]:
                raise ConfigError(f"{where}: conversation {i}: expected {{'conversations': [{{'from', 'value'}}, …]}}")
            answer = turns[1].get("value", "") if len(turns) > 1 and isinstance(turns[1], dict) else ""
            cap = max(1, len(answer.split()) * 2) if answer else default_max_tokens  # ≈ tokens; a cap, not a target
            rows.append({"source": "sharegpt", "prompt": str(turns[0]["value"]), "max_tokens": cap, "stop": []})
        return rows
    if fmt != "jsonl":
        raise ConfigError(f"workload.format: {fmt!r} is not one of auto, jsonl, sharegpt")
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"]:
            raise ConfigError(f"{where}:{n}: needs a non-empty string 'prompt'")
        cap = row.get("max_tokens", row.get("output_tokens", default_max_tokens))
        if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
            raise ConfigError(f"{where}:{n}: 'max_tokens' must be an integer ≥ 1, got {cap!r}")
        stop = row.get("stop", [])
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise ConfigError(f"{where}:{n}: 'stop' must be a string or a list of strings")
        rows.append({"source": row.get("source", "file"), "prompt": row["prompt"], "max_tokens": cap, "stop": stop})
    return rows


def build_reference(fidelity: dict, task_manager, seed: int) -> list[str]:
    """Fidelity reference texts: whole documents (prompt + target) of `fidelity.tasks`, seeded sample."""
    texts = []
    if fidelity.get("tasks"):
        loaded = task_manager.load(fidelity["tasks"])["tasks"]
        for name in fidelity["tasks"]:
            task = loaded[name]
            for d in task.eval_docs:
                target = task.doc_to_target(d)
                if isinstance(target, str):
                    prompt = task.doc_to_text(d)
                    texts.append(prompt + (task.config.target_delimiter if prompt else "") + target)
    random.Random(seed).shuffle(texts)
    return texts[: fidelity.get("max_texts", 200)]


def write_files(workload: dict, load: dict, fidelity: dict, model, include_path: str | list[str] | None, seed: int,
                out: Path, reference: Path, gated: list[str] = ()) -> str:
    """The `workload` stage: the requests (`out`, JSONL) and the fidelity reference texts (`reference`).
    A bad user file is one line before any model or task loads; so is a gated metric (`gated`:
    gate.quality's keys) that its task does not compute. Returns what it wrote, in words."""
    if workload["source"] == "file":
        read_user_file(Path(workload["path"]), workload.get("format", "auto"))
    from transformers import AutoTokenizer

    from evalgate.evaluate import check_gated_metrics
    from evalgate.evaluate import task_manager as load_tasks
    from evalgate.models import resolve_model

    fidelity = fidelity or {}
    tasks = (workload.get("tasks") or []) if workload["source"] == "tasks" else []
    gated_tasks = [m.split("/")[0] for m in gated if not m.startswith("fidelity/")]
    task_manager = load_tasks(list(dict.fromkeys(tasks + fidelity.get("tasks", []) + gated_tasks)), include_path)
    check_gated_metrics(task_manager, list(gated))
    requests = build(workload, load, task_manager, AutoTokenizer.from_pretrained(resolve_model(model)), seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in requests)
    texts = build_reference(fidelity, task_manager, seed)
    with open(reference, "w") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
    return (f"{len(requests)} requests ({workload.get('name', workload['source'])}) in {out}, "
            f"{len(texts)} reference texts in {reference}")
