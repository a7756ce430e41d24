"""What the stage commands do once their options are read. `evalgate.cli` (the commands dvc.yaml runs)
and `evalgate.repro` (the same stages run in its own process, then one `dvc commit`) both call these,
so the two paths run the same code and the scheduler does not import the CLI."""

from __future__ import annotations

import sys
from pathlib import Path

PARAMS = Path("params.yaml")  # the composed params (evalgate compose writes it)
GGUF = Path("gguf")  # the gguf stage's folder


def quantize(cfg, variant: str, out: Path, gguf: Path) -> dict:
    """The variant's checkpoint when its method is offline, a marker otherwise (evalgate.quantize); a
    failure is said and recorded, and the variant's run rejects it."""
    from evalgate.quantize import quantize_variant

    info = quantize_variant(variant, cfg.variant(variant).quantization, cfg.model, out, gguf, cfg.engine)
    if "error" in info:
        print(f"quantize {variant}: failed: {info['error']}")
    elif info["checkpoint"]:
        print(f"quantize {variant}: {info}")
    return info


def gate(cfg, results: Path, out: Path) -> dict:
    """A verdict for every variant against the baseline, written to `out` and said line by line."""
    import json

    from evalgate.gate import decide
    from evalgate.results import Results

    verdicts = decide(cfg, Results(results).load(cfg.variants))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(verdicts, indent=1))
    for name, v in verdicts["variants"].items():
        print(f"gate: {name}: {v['verdict']}: {v['reason']}")
    tied = verdicts["best_within_noise"]
    print(
        f"gate: best accepted variant: {verdicts['best']}"
        + (f" (no difference from {', '.join(tied)} within the run's noise)" if tied else "")
    )
    return verdicts


def report(cfg, results: Path, gate: Path, out: Path, checkpoints: Path, params: Path, pool=None) -> int:
    """The summary, DVC's metrics and plots data, the pictures (in `pool`'s processes when given:
    evalgate.report.draw); then the MLflow parent run, and the best accepted variant registered
    (evalgate.registry). Returns 75 when MLflow stopped answering while it logged (not recorded as done,
    so the next repro runs the report again), else 0."""
    import json

    from evalgate import tracking
    from evalgate.report import write_report
    from evalgate.results import Results

    tracking.check_reachable(cfg.mlflow)  # a tracking server that does not answer: one line, exit 2 (gate.json stays)
    verdicts = json.loads(gate.read_text())
    store = Results(results)
    table, files = write_report(cfg, store, verdicts, out, pool)
    print((out / "summary.md").read_text())
    names = list(cfg.variants)
    parent = tracking.log_report(
        cfg.mlflow,
        cfg.raw,
        tracking.parent_name(cfg.model.id, cfg.engine["name"], len(names)),
        names,
        {n: cfg.variant(n).as_params() for n in names},
        store,
        verdicts,
        table,
        [*files, gate, params],
    )
    if tracking._OFF:
        print("report: MLflow stopped answering while logging; exit 75 so that DVC runs the report again", file=sys.stderr)
        return 75
    from evalgate.registry import register_best

    register_best(cfg, verdicts, store, parent, checkpoints)
    return 0


def supervise(
    cfg,
    variant: str,
    folder: Path,
    workload,
    reference,
    checkpoint,
    baseline,
    params: Path,
    gguf: Path = GGUF,
    launcher=None,
    **side_by_side,
) -> int:
    """The stage's own process: checks that need nothing heavy, then the worker under evalgate.faults
    (`side_by_side`: supervise's env, scope, stop and output, for evalgate.repro's CPU variants)."""
    from evalgate import faults, tracking
    from evalgate.engines import get_engine
    from evalgate.results import VariantResults

    get_engine(cfg.engine["name"], cfg.engine).preflight()  # engine not installed → one line, exit 2
    tracking.check_reachable(cfg.mlflow)  # a tracking server that does not answer → one line, exit 2
    argv = [
        "run",
        variant,
        "--workload",
        str(workload),
        "--reference",
        str(reference),
        "--out",
        str(folder),
        "--params",
        str(params),
        "--gguf",
        str(gguf),
    ]
    if checkpoint:
        argv += ["--checkpoint", str(checkpoint)]
    if baseline:
        argv += ["--baseline", str(baseline)]
    sys.stdout.flush()
    return faults.supervise(
        variant,
        faults.worker_command(argv),
        VariantResults(folder),
        cfg.faults,
        log=lambda line: print(line, flush=True),
        mlflow=cfg.mlflow,
        launcher=launcher,
        **side_by_side,
    )
