"""Quality through lm-eval's own tasks and model classes, keeping per-sample logs for the gate."""
from __future__ import annotations

import contextlib
import functools
import math
import weakref
from pathlib import Path

from evalgate.config import ConfigError
from evalgate.metrics import flatten_lmeval


def task_manager(tasks: list[str], include_path: str | list[str] | None):
    """A TaskManager that knows `tasks`; one-line ConfigError naming an unknown task.

    `include_path`: one folder of task files or several (`eval.include_path`), beside lm-eval's own.
    Indexing lm-eval's ~15k built-in task files takes ~12 s on 2 cores, so the local include paths are
    tried alone first and the built-ins are indexed only when a task is not found there. One per
    process and task list (the scheduler prepares every variant with the same)."""
    paths = (include_path,) if isinstance(include_path, str) else tuple(include_path or ())
    return _task_manager(tuple(tasks), paths)


@functools.lru_cache(maxsize=8)
def _task_manager(tasks: tuple[str, ...], paths: tuple[str, ...]):
    from lm_eval.tasks import TaskManager

    for p in paths:
        if not Path(p).is_dir():
            raise ConfigError(f"eval.include_path: {p!r} is not a folder")
    include = list(paths) or None
    tasks_index = TaskManager(include_path=include, include_defaults=False) if include else None
    if tasks_index is None or set(tasks) - set(tasks_index.all_tasks):
        tasks_index = TaskManager(include_path=include)
    unknown = [t for t in tasks if t not in tasks_index.all_tasks]
    if unknown:
        raise ConfigError(f"eval.tasks: unknown lm-eval task {unknown[0]!r} (not among lm-eval's tasks"
                          f"{' nor in ' + ', '.join(paths) if paths else ''})")
    return tasks_index


def check_gated_metrics(tasks_index, metrics: list[str]) -> None:
    """Every gated lm-eval metric (`gate.quality`: `task/metric[/filter]`) is one its task computes, under
    one of its filters (`none` unless the task defines others): a ConfigError naming the key and what the
    task has, before any model loads, instead of a variant that runs in full and is then rejected for a
    missing metric. lm-eval's own task objects say it (their metric list and filters)."""
    keys = [m for m in metrics if not m.startswith("fidelity/")]
    passed = _checked.setdefault(tasks_index, set())
    if not keys or tuple(keys) in passed:   # the scheduler prepares every variant with the same
        return
    loaded = tasks_index.load(sorted({k.split("/")[0] for k in keys}))["tasks"]
    for key in keys:
        task, metric, *flt = key.split("/")
        t = loaded.get(task)
        if t is None or not hasattr(t, "higher_is_better"):
            continue  # a group: its members' metrics are checked when they run
        known = sorted(t.higher_is_better())
        filters = sorted({f.name for f in getattr(t, "_filters", [])}) or ["none"]
        want = flt[0] if flt else "none"
        if metric not in known:
            raise ConfigError(f"gate.quality.{key}: task {task!r} computes {', '.join(known)}; not {metric!r}")
        if want not in filters:
            raise ConfigError(f"gate.quality.{key}: task {task!r} has the filters {', '.join(filters)}; not {want!r} "
                              f"(write {task}/{metric}/<filter>)")
    passed.add(tuple(keys))


# the gated keys that passed, per task index: loading the tasks again to check them took 0.08 s a variant (2-core
# CPU), paid seven times on the critical path before a scheduled GPU run's first server starts
_checked: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def evaluate(lm, tasks: list[str], tasks_index, out, limit=None, bootstrap_iters: int = 1000,
             seed: int = 0, use_cache: str | None = None) -> dict[str, float]:
    """Run lm-eval; store its results (`lm_eval.json`) and per-sample logs in `out` (the variant's
    `VariantResults`); return flat metrics. `use_cache`: lm-eval's request cache, which answers the
    docs sequential looks already evaluated."""
    from lm_eval import simple_evaluate

    with _no_env_info():
        res = simple_evaluate(model=lm, tasks=tasks, task_manager=tasks_index, limit=limit, log_samples=True,
                              bootstrap_iters=bootstrap_iters, use_cache=use_cache, **_seeds(seed))
    out.write_samples(res.pop("samples", {}))
    out.write_lm_eval({k: res[k] for k in ("results", "configs", "versions", "n-samples", "higher_is_better") if k in res})
    return flatten_lmeval(res["results"])


def evaluate_docs(lm, samples: dict[str, list[int]], tasks_index, seed: int = 0, use_cache: str | None = None) -> dict:
    """lm-eval's logged samples of just these docs (`samples`: task → doc indices), for a sequential look."""
    from lm_eval import simple_evaluate

    with _no_env_info():
        res = simple_evaluate(model=lm, tasks=list(samples), task_manager=tasks_index, samples=samples,
                              log_samples=True, bootstrap_iters=0, use_cache=use_cache, **_seeds(seed))
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


@contextlib.contextmanager
def _no_env_info():
    """lm-eval adds the environment to every result (torch's collect_env: subprocesses, ≈ 0.8 s a call on
    2 cores, three calls per variant with the sequential looks); evalgate keeps none of it (lm_eval.json
    holds results, configs, versions, counts), so that step is skipped while evalgate's calls run."""
    import lm_eval.evaluator as ev

    saved = ev.add_env_info
    ev.add_env_info = lambda results: None
    try:
        yield
    finally:
        ev.add_env_info = saved


def _seeds(seed: int) -> dict:
    return {"random_seed": seed, "numpy_random_seed": seed, "torch_random_seed": seed, "fewshot_random_seed": seed}
