"""Quality through lm-eval's own tasks and model classes, keeping per-sample logs for the gate."""
from __future__ import annotations

import functools
import math
from pathlib import Path

from evalgate.config import ConfigError
from evalgate.metrics import flatten_lmeval


def task_manager(tasks: list[str], include_path: str | None):
    """A TaskManager that knows `tasks`; one-line ConfigError naming an unknown task.

    Indexing lm-eval's ~15k built-in task files takes ~12 s on 2 cores, so the local include path is
    tried alone first and the built-ins are indexed only when a task is not found there. One per
    process and task list (the scheduler prepares every variant with the same)."""
    return _task_manager(tuple(tasks), include_path)


@functools.lru_cache(maxsize=8)
def _task_manager(tasks: tuple[str, ...], include_path: str | None):
    from lm_eval.tasks import TaskManager

    if include_path and not Path(include_path).is_dir():
        raise ConfigError(f"eval.include_path: {include_path!r} is not a folder")
    tasks_index = TaskManager(include_path=include_path, include_defaults=False) if include_path else None
    if tasks_index is None or set(tasks) - set(tasks_index.all_tasks):
        tasks_index = TaskManager(include_path=include_path)
    unknown = [t for t in tasks if t not in tasks_index.all_tasks]
    if unknown:
        raise ConfigError(f"eval.tasks: unknown lm-eval task {unknown[0]!r}")
    return tasks_index


def evaluate(lm, tasks: list[str], tasks_index, out, limit=None, bootstrap_iters: int = 1000,
             seed: int = 0, use_cache: str | None = None) -> dict[str, float]:
    """Run lm-eval; store its results (`lm_eval.json`) and per-sample logs in `out` (the variant's
    `VariantResults`); return flat metrics. `use_cache`: lm-eval's request cache, which answers the
    docs sequential looks already evaluated."""
    from lm_eval import simple_evaluate

    res = simple_evaluate(model=lm, tasks=tasks, task_manager=tasks_index, limit=limit, log_samples=True,
                          bootstrap_iters=bootstrap_iters, use_cache=use_cache, **_seeds(seed))
    out.write_samples(res.pop("samples", {}))
    out.write_lm_eval({k: res[k] for k in ("results", "configs", "versions", "n-samples", "higher_is_better") if k in res})
    return flatten_lmeval(res["results"])


def evaluate_docs(lm, samples: dict[str, list[int]], tasks_index, seed: int = 0, use_cache: str | None = None) -> dict:
    """lm-eval's logged samples of just these docs (`samples`: task → doc indices), for a sequential look."""
    from lm_eval import simple_evaluate

    res = simple_evaluate(model=lm, tasks=list(samples), task_manager=tasks_index, samples=samples, log_samples=True,
                          bootstrap_iters=0, use_cache=use_cache, **_seeds(seed))
    return res.get("samples", {})


def doc_counts(tasks_index, tasks: list[str], limit=None) -> dict[str, int]:
    """Docs each task evaluates (after `eval.limit`, as lm-eval applies it)."""
    loaded = tasks_index.load(tasks)["tasks"]
    counts = {}
    for t in tasks:
        n = len(list(loaded[t].eval_docs))
        if limit is not None:
            n = min(n, int(math.ceil(limit * n)) if limit < 1 else int(limit))
        counts[t] = n
    return counts


def output_types(tm, tasks: list[str]) -> dict[str, str]:
    """Each task's lm-eval output type (generate_until, multiple_choice, loglikelihood_rolling…)."""
    loaded = tm.load(tasks)["tasks"]
    return {t: loaded[t].config.output_type for t in tasks}


def _seeds(seed: int) -> dict:
    return {"random_seed": seed, "numpy_random_seed": seed, "torch_random_seed": seed, "fewshot_random_seed": seed}
