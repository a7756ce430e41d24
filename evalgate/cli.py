"""`evalgate`: the one command. Its subcommands are the pipeline's stages (dvc.yaml calls them) and the
two a person types (`compose`, `repro`):

  evalgate compose [OVERRIDES…]   conf/ (Hydra) → params.yaml
  evalgate repro [--serial]       the scheduled `dvc repro` (make repro, gpu/pipeline.sh)
  evalgate fixture                the toy model, its draft and lm-eval tasks (no model hub here)
  evalgate workload               the requests every variant gets, and the fidelity reference texts
  evalgate quantize VARIANT       the variant's offline-quantized checkpoint, when it needs one
  evalgate run VARIANT            serve it once: quality checks, then the load sweep (the baseline too)
  evalgate gate                   a verdict for every variant against the baseline
  evalgate report                 summary, DVC metrics and plots, pictures; the MLflow parent run
  evalgate check [--promote]      the CI gate: exit 1 when the verdicts break gate.check's policy

`evalgate --help` and `evalgate COMMAND --help` say more. Installed (`pip install -e .`) it is a
console command; `python -m evalgate …` is the same without installing (the GPU host runs it so).

What every command shares is here, once: offline hub settings, third-party warning noise filtered
(evalgate.quiet), params.yaml loaded and validated (evalgate.compose.load), and a bad value as one
line naming its key on stderr with exit code 2, before any model loads.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from evalgate.config import ConfigError

HELP = (
    "The eval-gated inference-optimization pipeline. Its stages are subcommands (dvc.yaml calls them); "
    "`compose` writes params.yaml from conf/, `repro` runs the scheduled dvc repro (make repro). "
    "`evalgate COMMAND --help` for each."
)
app = typer.Typer(
    name="evalgate",
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

Params = Annotated[Path, typer.Option("--params", help="the composed params (evalgate compose writes it)")]
PARAMS = Path("params.yaml")
ReferenceFile = Annotated[Path, typer.Option(help="fidelity reference texts (JSONL)")]
ResultsDir = Annotated[Path, typer.Option(help="one results folder per variant")]
WORKLOAD, REFERENCE, RESULTS = Path("data/workload.jsonl"), Path("data/reference.jsonl"), Path("results")


def _config(params: Path):
    from evalgate.compose import load

    return load(params)


@app.command()
def compose(
    overrides: Annotated[list[str] | None, typer.Argument(help="Hydra overrides: 'variant=[int8]'")] = None,
    conf: Annotated[Path, typer.Option(help="the Hydra config folder")] = Path("conf"),
    out: Annotated[Path, typer.Option(help="where the composition goes")] = PARAMS,
    check: Annotated[bool, typer.Option("--check", help="only say whether OUT matches conf/ (exit 1 if not)")] = False,
):
    """conf/ (Hydra) → params.yaml, validated before it is written (what `dvc exp run -S …` does itself)."""
    from evalgate import compose as c

    params = c.compose(list(overrides or []), conf)
    c.validate(params, conf)  # a bad override never lands in params.yaml
    if check:
        same = c.matches(params, out)
        print(f"{out} {'matches' if same else 'differs from'} {conf}/")
        raise typer.Exit(0 if same else 1)
    c.write(params, out)
    print(f"wrote {out}: baseline + variants {', '.join(params['variants']) or '(none)'}")


@app.command()
def repro(
    serial: Annotated[bool, typer.Option("--serial", help="one variant at a time (the reference timing)")] = False,
    params: Params = PARAMS,
):
    """The scheduled `dvc repro`: DVC decides what is stale, the stale variants run side by side on one
    accelerator (one at a time on the CPU's in-process engine), DVC records them, then gate and report."""
    from evalgate.repro import repro as run_repro

    run_repro(_config(params), serial)


app.command("schedule", hidden=True, help="Old name of `repro`.")(repro)


@app.command()
def fixture(
    out: Annotated[Path, typer.Option(help="folder for model/, draft/, tasks/, metrics.json")] = Path("fixtures"),
    params: Params = PARAMS,
):
    """Train the toy target and draft models and write their lm-eval tasks (the `fixture:` params)."""
    import json

    import yaml

    from evalgate.config import fixture_params

    if not params.exists():
        raise ConfigError(f"{params}: not found (compose it with `evalgate compose`)")
    section = fixture_params(yaml.safe_load(params.read_text()) or {})
    from evalgate.toymodel import build

    try:
        metrics = build(section, out)
    except KeyError as e:
        raise ConfigError(str(e).strip("'\"")) from None
    print(json.dumps(metrics, indent=1))


@app.command()
def workload(
    out: Annotated[Path, typer.Option(help="the requests (JSONL)")] = WORKLOAD,
    reference: ReferenceFile = REFERENCE,
    params: Params = PARAMS,
):
    """The requests every variant is profiled with, and the fidelity reference texts, built once."""
    from evalgate.workload import write_files

    cfg = _config(params)
    print(
        "wrote "
        + write_files(
            cfg.workload, cfg.load, cfg.eval.get("fidelity"), cfg.model, cfg.eval.get("include_path"), cfg.seed, out, reference
        )
    )


@app.command()
def quantize(
    variant: Annotated[str, typer.Argument(help="a variant of params.yaml")],
    out: Annotated[Path, typer.Option(help="the checkpoint folder (default checkpoints/VARIANT)")] = None,
    params: Params = PARAMS,
):
    """The variant's checkpoint when its method is offline (w4a16, w8a8: compressed-tensors); a ~1 s
    marker otherwise. A failed quantization is recorded; the variant's run rejects it with the error."""
    from evalgate.quantize import quantize_variant

    cfg = _config(params)
    info = quantize_variant(variant, cfg.variant(variant).quantization, cfg.model, out or Path("checkpoints") / variant)
    if "error" in info:
        print(f"quantize {variant}: failed: {info['error']}")
    elif info["checkpoint"]:
        print(f"quantize {variant}: {info}")


@app.command()
def run(
    variant: Annotated[str, typer.Argument(help="a variant of params.yaml, or `baseline`")],
    workload: Annotated[Path, typer.Option(help="the requests (the workload stage's)")] = WORKLOAD,
    reference: ReferenceFile = REFERENCE,
    checkpoint: Annotated[Path | None, typer.Option(help="the quantize stage's folder (served if it holds one)")] = None,
    baseline: Annotated[Path | None, typer.Option(help="the baseline's results (fidelity, sequential looks)")] = None,
    out: Annotated[Path | None, typer.Option(help="the variant's results folder (default results/VARIANT)")] = None,
    attach: Annotated[Path | None, typer.Option(help="(scheduler) a running server's record: quality only")] = None,
    params: Params = PARAMS,
):
    """Serve one variant once, then its quality checks and its load sweep through that endpoint.

    A variant the engine cannot run, or one that fails while running, is recorded in its status.json
    (and rejected by the gate); the command still exits 0, so the other variants run."""
    from evalgate import runner
    from evalgate.engines import get_engine
    from evalgate.results import VariantResults

    cfg = _config(params)
    engine = get_engine(cfg.engine["name"], cfg.engine)
    folder = VariantResults(out or Path("results") / variant)
    base = VariantResults(baseline) if baseline else None
    if attach:
        raise typer.Exit(runner.attached_quality(cfg, variant, folder, workload, reference, base, engine, attach))
    job = runner.prepare(cfg, variant, folder, workload, reference, str(checkpoint) if checkpoint else None, base, engine)
    if job is not None:
        runner.run_serial(job, engine)


@app.command()
def gate(
    results: ResultsDir = RESULTS,
    out: Annotated[Path, typer.Option(help="the verdicts (JSON)")] = Path("reports/gate.json"),
    params: Params = PARAMS,
):
    """A verdict (accept/reject, with its reason) for every variant against the baseline."""
    import json

    from evalgate.gate import decide
    from evalgate.results import Results

    cfg = _config(params)
    verdicts = decide(cfg, Results(results).load(cfg.variants))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(verdicts, indent=1))
    for name, v in verdicts["variants"].items():
        print(f"gate: {name}: {v['verdict']}: {v['reason']}")
    print(f"gate: best accepted variant: {verdicts['best']}")


@app.command()
def report(
    results: ResultsDir = RESULTS,
    gate: Annotated[Path, typer.Option(help="the gate's verdicts")] = Path("reports/gate.json"),
    out: Annotated[Path, typer.Option(help="the report folder")] = Path("reports"),
    checkpoints: Annotated[Path, typer.Option(help="the quantize stages' folders (registered with the winner)")] = Path(
        "checkpoints"
    ),
    params: Params = PARAMS,
):
    """The summary, DVC's metrics and plots data, the pictures; then the MLflow parent run, and the best
    accepted variant registered (evalgate.registry)."""
    import json

    from evalgate import tracking
    from evalgate.report import write_report
    from evalgate.results import Results

    cfg = _config(params)
    verdicts = json.loads(gate.read_text())
    store = Results(results)
    table, files = write_report(cfg, store, verdicts, out)
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
    from evalgate.registry import register_best

    register_best(cfg, verdicts, store, parent, checkpoints)


@app.command()
def check(
    gate: Annotated[Path, typer.Option(help="the gate's verdicts")] = Path("reports/gate.json"),
    results: ResultsDir = RESULTS,
    promote: Annotated[bool, typer.Option("--promote", help="on a pass, move the registry alias to this run's version")] = False,
    params: Params = PARAMS,
):
    """The CI gate: exit 1 when the gate's verdicts break the policy of `gate.check` (conf/gate/), one
    line per failing variant; 0 otherwise. Appends its result to $GITHUB_STEP_SUMMARY when set."""
    from evalgate.check import run_check

    raise typer.Exit(run_check(_config(params), gate, results, promote))


def main(argv: list[str] | None = None) -> None:
    """The console command: the shared preamble, then the subcommand."""
    from evalgate.progress import quiet_bars_in_logs
    from evalgate.quiet import quiet_third_party

    # lm-eval and datasets try the hub for metadata unless told otherwise; local tasks need none
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_third_party()
    quiet_bars_in_logs()  # no progress bars in CI logs (not a terminal); evalgate.progress
    try:
        app(args=argv, prog_name="evalgate")
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
