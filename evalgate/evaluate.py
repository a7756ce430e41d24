"""Quality through lm-eval's own tasks and model classes, keeping per-sample logs for the gate."""
from __future__ import annotations

import json
from pathlib import Path

from evalgate.config import ConfigError
from evalgate.metrics import flatten_lmeval


def task_manager(tasks: list[str], include_path: str | None):
    """A TaskManager that knows `tasks`; one-line ConfigError naming an unknown task.

    Indexing lm-eval's ~15k built-in task files takes ~12 s on 2 cores, so the local include path is
    tried alone first and the built-ins are indexed only when a task is not found there."""
    from lm_eval.tasks import TaskManager

    if include_path and not Path(include_path).is_dir():
        raise ConfigError(f"eval.include_path: {include_path!r} is not a folder")
    tm = TaskManager(include_path=include_path, include_defaults=False) if include_path else None
    if tm is None or set(tasks) - set(tm.all_tasks):
        tm = TaskManager(include_path=include_path)
    unknown = [t for t in tasks if t not in tm.all_tasks]
    if unknown:
        raise ConfigError(f"eval.tasks: unknown lm-eval task {unknown[0]!r}")
    return tm


def evaluate(lm, tasks: list[str], tm, out_dir: Path, limit=None, bootstrap_iters: int = 1000,
             seed: int = 0) -> dict[str, float]:
    """Run lm-eval; write `lm_eval.json` (its results) and `samples_<task>.jsonl`; return flat metrics."""
    from lm_eval import simple_evaluate
    from lm_eval.utils import handle_non_serializable

    res = simple_evaluate(model=lm, tasks=tasks, task_manager=tm, limit=limit, log_samples=True,
                          bootstrap_iters=bootstrap_iters, random_seed=seed, numpy_random_seed=seed,
                          torch_random_seed=seed, fewshot_random_seed=seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = res.pop("samples", {})
    for task, rows in samples.items():
        with open(out_dir / f"samples_{task}.jsonl", "w") as f:
            for r in sorted(rows, key=lambda r: r["doc_id"]):
                f.write(json.dumps(r, default=handle_non_serializable) + "\n")
    keep = {k: res[k] for k in ("results", "configs", "versions", "n-samples", "higher_is_better") if k in res}
    (out_dir / "lm_eval.json").write_text(json.dumps(keep, indent=1, default=handle_non_serializable))
    return flatten_lmeval(res["results"])
