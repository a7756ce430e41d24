"""`evalgate`: the one command. Its subcommands are the pipeline's stages (dvc.yaml calls them) and the
two a person types (`compose`, `repro`):

  evalgate compose [OVERRIDES…]   conf/ (Hydra) → params.yaml
  evalgate repro [--serial]       the scheduled `dvc repro` (make repro, gpu/pipeline.sh)
  evalgate fixture                the toy model, its draft and lm-eval tasks (no model hub here)
  evalgate workload               the requests every variant gets, and the fidelity reference texts
  evalgate gguf                   the model as the engine serves it when not HF (llama.cpp: GGUF F16)
  evalgate quantize VARIANT       the variant's offline-quantized checkpoint, when it needs one
  evalgate run VARIANT            serve it once: quality checks, then the load sweep (the baseline too)
  evalgate gate                   a verdict for every variant against the baseline
  evalgate report                 summary, DVC metrics and plots, pictures; the MLflow parent run
  evalgate check [--promote]      the CI gate: exit 1 when the verdicts break gate.check's policy

`evalgate --help` and `evalgate COMMAND --help` say more. Installed (`pip install -e .`) it is a
console command; `python -m evalgate …` is the same without installing (the GPU host runs it so).

What every command shares is here, once: offline hub settings, third-party warning noise filtered
(evalgate.quiet), MLflow's retries cut short (evalgate.tracking), params.yaml loaded and validated
(evalgate.compose.load) before anything heavy is imported, and a bad value as one line naming its key
on stderr with exit code 2, before any model loads. After a `dvc exp run` whose composition does not
validate, params.yaml is put back as it was (the rejected one kept beside it), so the next command does
not trip over it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from evalgate import stages
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
PARAMS = stages.PARAMS
ReferenceFile = Annotated[Path, typer.Option(help="fidelity reference texts (JSONL)")]
ResultsDir = Annotated[Path, typer.Option(help="one results folder per variant")]
WORKLOAD, REFERENCE, RESULTS = Path("data/workload.jsonl"), Path("data/reference.jsonl"), Path("results")
GGUF = stages.GGUF
GgufDir = Annotated[Path, typer.Option(help="the gguf stage's folder (the GGUF files engine llamacpp serves)")]


def _config(params: Path):
    from evalgate.compose import load

    try:
        return load(params)
    except ConfigError as e:
        raise ConfigError(f"{e}{_restore_after_failed_experiment(params)}") from None


def _restore_after_failed_experiment(params: Path) -> str:
    """Under `dvc exp run` (DVC sets DVC_EXP_NAME), a composition that does not validate stays in
    params.yaml after the experiment fails, and every later command fails on it. Put HEAD's params.yaml
    back (if it validates) and keep the rejected one as params.yaml.rejected; say so in the error line."""
    import subprocess

    import yaml

    from evalgate.compose import validate

    if not os.environ.get("DVC_EXP_NAME") or params.name != "params.yaml":
        return ""
    root = params.resolve().parent
    p = subprocess.run(["git", "show", "HEAD:./params.yaml"], cwd=root, capture_output=True, text=True)
    if p.returncode:
        return ""
    try:
        validate(yaml.safe_load(p.stdout) or {}, root / "conf")
    except (ConfigError, yaml.YAMLError):
        return ""
    rejected = params.with_name("params.yaml.rejected")
    rejected.write_text(params.read_text())
    params.write_text(p.stdout)
    return f"; params.yaml put back as in HEAD (this experiment's composition is kept in {rejected.name})"


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
    no_run_cache: Annotated[
        bool,
        typer.Option(
            "--no-run-cache",
            help="run every stale variant's command, even where DVC's cache holds its results (to time it again)",
        ),
    ] = False,
    params: Params = PARAMS,
):
    """The scheduled `dvc repro`: DVC decides what is stale, the stale variants run side by side on one
    accelerator (one at a time on the CPU's in-process engine), DVC records them, then gate and report."""
    cfg = _config(params)
    from evalgate import tracking
    from evalgate.repro import repro as run_repro

    tracking.check_reachable(cfg.mlflow)
    raise typer.Exit(run_repro(cfg, serial, no_run_cache) or 0)


app.command("schedule", hidden=True, help="Old name of `repro`.")(repro)


@app.command()
def fixture(
    out: Annotated[Path, typer.Option(help="folder for model/, draft/, tasks/, metrics.json")] = Path("fixtures"),
    params: Params = PARAMS,
):
    """Train the toy target and draft models and write their lm-eval tasks (the `fixture:` params)."""
    import json

    section = _config(params).raw.get("fixture")  # every key of params checked first: nothing trains on a bad config
    if not section:
        raise ConfigError("fixture: missing (the fixture stage trains from it: conf/fixture/)")
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
    cfg = _config(params)
    from evalgate.workload import write_files

    print(
        "wrote "
        + write_files(
            cfg.workload,
            cfg.load,
            cfg.eval.get("fidelity"),
            cfg.model,
            cfg.eval.get("include_path"),
            cfg.seed,
            out,
            reference,
            gated=[th.metric for th in cfg.thresholds],
        )
    )


@app.command()
def gguf(
    out: Annotated[Path, typer.Option(help="the folder for the converted files and gguf.json")] = GGUF,
    params: Params = PARAMS,
):
    """The model (and its draft) in the format the engine serves, when that is not the HF checkpoint:
    engine llamacpp converts them to GGUF F16 with llama.cpp's own converter and writes an Ollama
    Modelfile (building llama.cpp's tools first if this machine has none); other engines: a marker."""
    import json
    import shutil

    from evalgate.engines import get_engine

    cfg = _config(params)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    info = get_engine(cfg.engine["name"], cfg.engine).export_model(cfg.model, out)
    (out / "gguf.json").write_text(json.dumps(info or {"model": None, "engine": cfg.engine["name"]}, indent=1) + "\n")
    if info:
        files = [f"{k} {v['file']} ({v['bytes'] / 2**20:.1f} MiB)" for k, v in info.items() if k in ("model", "draft")]
        print(f"gguf: {', '.join(files)}")


@app.command()
def quantize(
    variant: Annotated[str, typer.Argument(help="a variant of params.yaml")],
    out: Annotated[Path, typer.Option(help="the checkpoint folder (default checkpoints/VARIANT)")] = None,
    gguf: GgufDir = GGUF,
    params: Params = PARAMS,
):
    """The variant's checkpoint when its method is offline (w4a16, w8a8: compressed-tensors; a GGUF type:
    llama-quantize); a ~1 s marker otherwise. A failed quantization is recorded; the variant's run
    rejects it with the error."""
    stages.quantize(_config(params), variant, out or Path("checkpoints") / variant, gguf)


@app.command()
def run(
    variant: Annotated[str, typer.Argument(help="a variant of params.yaml, or `baseline`")],
    workload: Annotated[Path, typer.Option(help="the requests (the workload stage's)")] = WORKLOAD,
    reference: ReferenceFile = REFERENCE,
    checkpoint: Annotated[Path | None, typer.Option(help="the quantize stage's folder (served if it holds one)")] = None,
    baseline: Annotated[Path | None, typer.Option(help="the baseline's results (fidelity, sequential looks)")] = None,
    out: Annotated[Path | None, typer.Option(help="the variant's results folder (default results/VARIANT)")] = None,
    attach: Annotated[Path | None, typer.Option(help="(scheduler) a running server's record: quality only")] = None,
    gguf: GgufDir = GGUF,
    worker: Annotated[bool, typer.Option("--worker", hidden=True, help="(supervisor) the variant's work itself")] = False,
    params: Params = PARAMS,
):
    """Serve one variant once, then its quality checks and its load sweep through that endpoint.

    The variant runs in a worker process under the fault policy (params `faults`, README: Failures): a
    transient failure (out of memory, a port taken, a timeout, a server that died) is retried, and when
    the tries are used up the command exits 75, so DVC does not cache it; a permanent one (an option the
    engine refuses…) is recorded in status.json and rejected by the gate, and the command exits 0, so the
    other variants run. A bad value is one line and exit 2, before any model loads."""
    cfg = _config(params)
    cfg.variant(variant)  # an unknown name: one line, now
    folder = out or Path("results") / variant
    if attach:
        from evalgate import runner
        from evalgate.engines import get_engine
        from evalgate.results import VariantResults

        engine = get_engine(cfg.engine["name"], cfg.engine)
        raise typer.Exit(
            runner.attached_quality(
                cfg,
                variant,
                VariantResults(folder),
                workload,
                reference,
                VariantResults(baseline) if baseline else None,
                engine,
                attach,
            )
        )
    if not worker:
        raise typer.Exit(stages.supervise(cfg, variant, folder, workload, reference, checkpoint, baseline, params, gguf))
    raise typer.Exit(_work(cfg, variant, folder, workload, reference, checkpoint, baseline, gguf))


def _work(cfg, variant: str, folder: Path, workload, reference, checkpoint, baseline, gguf: Path = GGUF) -> int:
    """The worker: prepare (fast checks, nothing loads), then serve and measure (evalgate.runner)."""
    import traceback

    from evalgate import runner
    from evalgate.engines import get_engine
    from evalgate.faults import EX_TEMPFAIL, classify, tell_supervisor
    from evalgate.lanes import Lane
    from evalgate.results import VariantResults

    engine = get_engine(cfg.engine["name"], cfg.engine)
    out = VariantResults(folder)
    lane = Lane(engine)  # beside other variants (evalgate.lanes): from before the checks that use the CPU
    lane.share()
    try:
        job = runner.prepare(
            cfg,
            variant,
            out,
            workload,
            reference,
            str(checkpoint) if checkpoint else None,
            VariantResults(baseline) if baseline else None,
            engine,
            str(gguf),
        )
        return runner.run_serial(job, engine, lane) if job is not None else 0
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - outside run_serial's own handling: told to the supervisor, then decided
        kind = classify(e)
        tell_supervisor(kind, f"prepare: {type(e).__name__}: {e}")
        if kind is None:
            raise
        import contextlib

        with contextlib.suppress(OSError):
            out.fail("prepare", f"{type(e).__name__}: {e}", traceback.format_exc(), transient=kind)
        print(f"run {variant}: failed before serving: {type(e).__name__}: {e} (transient: {kind})", flush=True)
        return EX_TEMPFAIL


@app.command()
def gate(
    results: ResultsDir = RESULTS,
    out: Annotated[Path, typer.Option(help="the verdicts (JSON)")] = Path("reports/gate.json"),
    params: Params = PARAMS,
):
    """A verdict (accept/reject, with its reason) for every variant against the baseline."""
    stages.gate(_config(params), results, out)


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
    code = stages.report(_config(params), results, gate, out, checkpoints, params)
    if code:
        raise typer.Exit(code)


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
    if argv is None and os.environ.get("EVALGATE_EXIT_TRACE"):  # registered before the heavy imports: runs after their handlers
        import atexit

        atexit.register(lambda: print(f"exit: atexit handlers done after {_exit_clock():.2f} s", file=sys.stderr, flush=True))
    try:
        app(args=argv, prog_name="evalgate")
    except ConfigError as e:
        from evalgate.tracking import redact

        print(f"config error: {redact(' '.join(str(e).split()))}", file=sys.stderr)
        sys.exit(2)
    finally:
        if argv is None:  # the process ends now (the console command, `python -m evalgate`, a DVC stage)
            # the collection at interpreter exit walks every object the imports made (torch, lm-eval,
            # MLflow, vLLM): 1.6 s → 0.2 s on the 2-core CPU (2026-11-26), paid by every stage and quality
            # worker; frozen objects still go with the process, and atexit handlers still run
            import gc

            gc.freeze()
            if os.environ.get("EVALGATE_EXIT_TRACE"):  # bench/gpu_verdict.py: where the exit's second goes
                _trace_exit()


_EXIT_T0: float | None = None


def _exit_clock() -> float:
    """Seconds since _trace_exit ran (the command's return)."""
    import time

    return time.perf_counter() - _EXIT_T0 if _EXIT_T0 is not None else float("nan")


def _trace_exit() -> None:
    """What the interpreter waits for after the command returned: the threads it joins first, the child
    processes multiprocessing joins at exit, then (an atexit handler registered last, so run first) how
    long those joins took. The rest of the exit is the other handlers and the teardown."""
    import atexit
    import multiprocessing
    import threading
    import time

    global _EXIT_T0
    t0 = _EXIT_T0 = time.perf_counter()
    waits = [t.name for t in threading.enumerate() if not t.daemon and t is not threading.main_thread()]
    kids = [p.name for p in multiprocessing.active_children()]
    print(f"exit: joins threads {waits or 'none'}, child processes {kids or 'none'}", file=sys.stderr, flush=True)
    atexit.register(
        lambda: print(
            f"exit: threads joined after {time.perf_counter() - t0:.2f} s; atexit handlers next", file=sys.stderr, flush=True
        )
    )
