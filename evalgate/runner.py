"""One variant's work in phases, shared by the serial `evalgate run VARIANT` stage and the scheduler.

  prepare   validate, resolve the model, ask the engine whether it can run the variant (nothing loads)
  track     open the variant's MLflow run (evalgate.tracking) as it starts: run_serial does, the
            scheduler does for the variants it starts side by side
  quality   cheap checks first: the fidelity screen (next-token KL and top-1 agreement against the
            baseline), then lm-eval (the gated tasks in sequential looks, then the rest), then answer
            flips; a variant that is already clearly worse stops here and is never profiled
  profile   the load sweep (evalgate.profile); the baseline's is run twice (A/A: the noise floor)
  finish    metrics.json + status.json from what the phases wrote; the MLflow run is closed

Every file goes through the results store (evalgate.results): each phase writes its own, so phases can
run in different processes (the scheduler's workers) and a failure in one keeps the rest.
"""
from __future__ import annotations

import contextlib
import functools
import json
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from evalgate.config import BASELINE, Config, ConfigError, ModelSpec, Variant
from evalgate.faults import EX_TEMPFAIL, classify, tell_supervisor
from evalgate.lanes import Lane
from evalgate.results import AGAIN, VariantResults, changed_docs
from evalgate.tracking import VariantRun, parent_name


@dataclass
class Job:
    cfg: Config
    variant: Variant
    model: ModelSpec
    out: VariantResults
    workload: Path
    reference: Path
    baseline: VariantResults | None    # the baseline's results (None for the baseline itself)
    task_manager: object               # lm-eval TaskManager
    tracker: VariantRun | None = None  # the variant's MLflow run

    @property
    def is_baseline(self) -> bool:
        return self.variant.name == BASELINE


def open_run(cfg: Config, variant: Variant, workload: Path | None, out: VariantResults,
             system_metrics: bool = True) -> VariantRun | None:
    """The variant's nested MLflow run, under this execution's parent (evalgate.tracking); its id goes
    to the results folder, for the scheduler's quality worker and the report."""
    run = VariantRun.open(cfg.mlflow, cfg.raw, variant.name, variant.as_params(),
                          parent_name(cfg.model.id, cfg.engine["name"], len(cfg.variants)),
                          workload=workload, tasks=cfg.eval["tasks"], system_metrics=system_metrics)
    if run is not None:
        out.write_tracking(run.info)
    return run


def track(job: Job, system_metrics: bool = True) -> None:
    """Open the job's MLflow run, now that the variant starts (once); `system_metrics` False: without a
    monitor of its own (the scheduler logs the host's once: tracking.host_metrics)."""
    if job.tracker is None:
        job.tracker = open_run(job.cfg, job.variant, job.workload, job.out, system_metrics)


def skipped_tasks(cfg: Config, skip: dict[str, str], tasks_index) -> dict[str, str]:
    """Tasks of eval.tasks whose lm-eval output type the engine cannot evaluate (`skip`: type → why) → why.
    A gated one is a ConfigError (one line, before anything loads): a gate must not pass on a skipped task."""
    from evalgate import sequential
    from evalgate.evaluate import output_types

    if not skip:
        return {}
    kinds = output_types(tasks_index, cfg.eval["tasks"])
    out = {t: f"{kind}: {skip[kind]}" for t, kind in kinds.items() if kind in skip}
    for t in sequential.gated_tasks(cfg.thresholds):
        if t in out:
            raise ConfigError(f"gate.quality: task {t!r} is gated but engine {cfg.engine['name']!r} cannot evaluate "
                              f"it ({out[t]}); drop it from eval.tasks and gate.quality (preset=llamacpp does)")
    return out


def prepare(cfg: Config, name: str, out: VariantResults, workload: Path, reference: Path, checkpoint: str | None,
            baseline: VariantResults | None, engine, gguf: str | None = None) -> Job | None:
    """Checks that fail fast (ConfigError: one line, exit 2); a variant the engine cannot run, or whose
    quantization failed, gets its status.json (and a failed MLflow run) now and None back (rejected
    with the reason). `gguf`: the gguf stage's folder (the GGUF files an engine that serves GGUF needs)."""
    from evalgate.engines.base import VariantUnsupported
    from evalgate.evaluate import check_gated_metrics, task_manager
    from evalgate.models import resolve_model, served_model
    from evalgate.quantize import checkpoint_error

    variant = cfg.variant(name)
    engine.preflight()                                                # engine not installed → ConfigError
    quant_error = checkpoint_error(checkpoint)
    model = cfg.model if quant_error else served_model(cfg.model, variant, checkpoint, gguf)
    resolve_model(model)                                              # missing path / offline hub → ConfigError
    tasks_index = task_manager(cfg.eval["tasks"], cfg.eval.get("include_path"))  # unknown task → ConfigError
    skipped_tasks(cfg, engine.skipped_output_types, tasks_index)      # a gated task it cannot run → ConfigError
    check_gated_metrics(tasks_index, [th.metric for th in cfg.thresholds])   # unknown gated metric → ConfigError
    out.reset()
    out.write("variant.json", {"name": variant.name, **variant.as_params()})
    error = f"quantization failed: {quant_error}" if quant_error else None
    if error is None:
        try:
            engine.check(model, variant)
        except VariantUnsupported as e:
            error = f"not supported: {e}"
    if error is not None:
        print(f"run {name}: {error}")
        out.fail("quantize" if quant_error else "check", quant_error or error.removeprefix("not supported: "))
        tracker = open_run(cfg, variant, workload, out)   # a run that starts and fails at once
        if tracker is not None:
            tracker.close(False, error=error, artifacts=out.path)
        return None
    base = baseline if baseline is not None and name != BASELINE else None
    return Job(cfg, variant, model, out, Path(workload), Path(reference), base, tasks_index)


def _baseline_ok(job: Job) -> dict | None:
    """The baseline's result to compare with, None when it failed (or this is the baseline). Waits for
    it: the scheduler runs the baseline's quality at the same time as the variants' (serially it is
    long finished)."""
    if job.baseline is None:
        return None
    job.baseline.wait_status(float(job.cfg.engine.get("quality_timeout_s", 1800)))
    base = job.baseline.load()
    return base if base["status"].get("ok") else None


class _Stopped(Exception):
    """The fidelity screen stopped the variant (raised from the looks' first check)."""

    def __init__(self, early: dict):
        self.early = early


def quality(job: Job, ep) -> dict:
    """Fidelity screen, lm-eval (sequential looks first), answer flips; writes quality.json.
    Returns it: `metrics`, `times`, and `early` (the early-rejection record) when it stopped.

    A variant's own measurements start before the baseline's are there (the scheduler runs all quality
    phases at once): its reference log-probs and the docs of its first look; the comparisons — the
    fidelity screen, then each look's check — wait for the baseline's quality to be recorded."""
    from evalgate import fidelity, gate

    cfg, out = job.cfg, job.out
    if job.tracker is not None:
        job.tracker.phase("quality")
    times: dict[str, float] = {}
    t = time.perf_counter()
    texts = [json.loads(line)["text"] for line in open(job.reference)]
    base_result = functools.cache(lambda: _baseline_ok(job))   # waited for and read once
    own = None
    if ep.own_fidelity:   # the engine's own tool (llama.cpp) reads the baseline's reference as it runs
        own = ep.reference_fidelity(texts, job.baseline if base_result() is not None else None, out)
    else:
        fidelity.save(ep.prompt_logprobs(texts, cfg.eval.get("fidelity", {}).get("top_k", 20)), out.fidelity_file)
    times["fidelity_s"] = time.perf_counter() - t
    metrics: dict[str, float] = {}
    screened = False

    def baseline() -> dict | None:
        """The baseline's result, and the first time the fidelity screen against it."""
        nonlocal screened
        base = base_result()
        if base is not None and not screened:
            screened = True
            metrics.update(own if own is not None else fidelity.fidelity_metrics(job.baseline, out, logprobs_only=True))
            _track(job, metrics)
            early = gate.fidelity_screen(cfg.thresholds, metrics)
            if early:
                raise _Stopped(early)
        return base

    first = out.read("unreproducible.first.json")
    if first is not None:   # this is the second evaluation (faults.retry_unreproducible): the gate warns
        metrics["retry/first_unreproducible_docs"] = float(changed_docs(first))
    t = time.perf_counter()
    try:
        lm_metrics, early = _evaluate(job, ep, baseline if job.baseline is not None else None)
    except _Stopped as stop:
        return _done(job, metrics, times, stop.early)
    times["eval_s"] = time.perf_counter() - t
    metrics.update(lm_metrics)
    if job.baseline is not None and not early and baseline() is not None:
        metrics.update(fidelity.fidelity_metrics(job.baseline, out, flips_only=True))
        early = gate.fidelity_screen(cfg.thresholds, metrics)
    _track(job, {**metrics, **{f"time/{k}": v for k, v in times.items()}})
    return _done(job, metrics, times, early)


def unreproduced(out: VariantResults) -> bool:
    """Whether the quality phase just run met results the engine did not reproduce (identical greedy
    requests answered differently: unreproducible.json, from a look's repeat or the gate's re-ask)."""
    return bool(out.read("unreproducible.json"))


def retry_alone(cfg: Config, out: VariantResults) -> bool:
    """faults.retry_unreproducible: an evaluation the engine did not reproduce is run once more, with
    the device to itself, on the same server; the verdict is the second one's (which, not reproducible
    either, is rejected as before). Why: on an H100, vLLM 0.24.0's draft-model speculation returned
    wrong prompt log-probs for a fifth of one look's requests in 5 of 22 scheduled runs and 0 of 2
    serial ones (docs/results/h100-2026-11-26-23, -27): a fault of the engine under one evaluation,
    not a quality the variant has. The first evaluation's record stays (unreproducible.first.json,
    first.samples_*), and the gate warns. False when the phase was reproducible or this was the retry."""
    return (bool(cfg.faults.get("retry_unreproducible", True)) and unreproduced(out)
            and out.read("unreproducible.first.json") is None)


def _track(job: Job, metrics: dict, step: int | None = None) -> None:
    if job.tracker is not None:
        job.tracker.metrics(metrics, step)


def _done(job: Job, metrics: dict, times: dict, early: dict | None) -> dict:
    q = {"metrics": metrics, "times": times, "early": early}
    job.out.write_quality(q)
    return q


def _evaluate(job: Job, ep, baseline) -> tuple[dict, dict | None]:
    """lm-eval through the served endpoint: (metrics, early-rejection record or None).

    With a baseline to compare against and gate.sequential on, the gated tasks are first evaluated in
    looks (evalgate.sequential); a stop skips the rest of the evaluation and records why, how many docs
    were evaluated and the time saved against the baseline's full evaluation. `baseline()`: the
    baseline's result, waited for (None: nothing to compare with); None for the baseline itself."""
    from evalgate import sequential
    from evalgate.evaluate import doc_counts, evaluate, evaluate_docs

    cfg, out, tasks_index = job.cfg, job.out, job.task_manager
    lm = ep.lm_eval_model()
    skipped = skipped_tasks(cfg, ep.skipped_output_types, tasks_index)
    tasks, limit = [t for t in cfg.eval["tasks"] if t not in skipped], cfg.eval.get("limit")
    if skipped:
        print(f"run {job.variant.name}: skipped tasks: " + "; ".join(f"{t} ({why})" for t, why in skipped.items()))
        out.write("skipped_tasks.json", skipped)
    full = dict(limit=limit, bootstrap_iters=cfg.eval.get("bootstrap_iters", 1000), seed=cfg.seed)
    looks = cfg.gate.get("sequential") or {}
    gated = sequential.gated_tasks(cfg.thresholds)

    def ask_again(docs):   # the same docs once more, bypassing any request cache
        return evaluate_docs(lm, docs, tasks_index, cfg.seed)

    if baseline is None or not sequential.enabled(looks) or not gated:
        base = baseline() if baseline is not None else None   # the fidelity screen before the whole evaluation
        quality = evaluate(lm, tasks, tasks_index, out, **full)
        return {**quality, **_reask_failing(job, ask_again, base, quality, tasks)}, None
    counts = doc_counts(tasks_index, tasks, limit)
    with tempfile.TemporaryDirectory() as tmp:
        # lm-eval's request cache, shared by the looks and the full eval, where the endpoint allows it
        cache = str(Path(tmp) / "requests") if ep.request_cache else None
        def base_and_rows():
            base = baseline()
            return None if base is None else (base, {t: job.baseline.samples(t) for t in gated})

        seq = sequential.evaluate_in_looks(
            lambda docs: evaluate_docs(lm, docs, tasks_index, cfg.seed, cache), {t: counts[t] for t in gated},
            base_and_rows, cfg.thresholds, looks["looks"], looks.get("alpha", 0.01), cfg.seed,
            repeat=ask_again,   # a stop is re-asked, uncached
            on_unreproducible=looks.get("on_unreproducible", "reject"))
        unreproducible = seq.get("unreproducible") or []
        if unreproducible:   # identical requests answered differently: both answers kept for a reviewer
            out.write_samples({t: r for t, r in seq["rows"].items() if t.endswith(".unreproduced")})
        rep = seq.get("repeat") if seq["stopped"] else None
        if rep and not rep["reproduced"]:   # a stop its repeat did not bear out (on_unreproducible reject)
            unreproducible = [*unreproducible, {"phase": "look", "look": seq["look"],
                                                **{x: rep[x] for x in ("task", "docs", "changed_docs", "outcome")}}]
        if unreproducible:
            out.write("unreproducible.json", unreproducible)
        if not seq["stopped"]:
            # the request cache holds the looks' answers, which the engine did not reproduce: ask afresh
            quality = evaluate(lm, tasks, tasks_index, out, use_cache=None if unreproducible else cache, **full)
            extra = {"sequential/stopped": 0.0, "sequential/looks_eval_s": seq["eval_s"]}
            if unreproducible:
                extra["sequential/unreproducible_docs"] = float(changed_docs(unreproducible))
            extra.update(_reask_failing(job, ask_again, baseline(), quality, tasks))
            return {**quality, **extra}, None
    out.write_samples(seq["rows"])  # what the looks evaluated, for a reviewer to recompute the stop
    total = sum(counts.values())
    base_eval = baseline()["metrics"].get("time/eval_s")
    early = {k: seq[k] for k in ("reason", "check", "look", "looks", "fraction", "alpha_per_look",
                                 "docs_evaluated", "eval_s", "repeat", "unreproducible") if seq.get(k)}
    early.update(kind="sequential", docs_total=total, docs_saved=total - seq["docs_evaluated"],
                 eval_s_saved=None if base_eval is None else max(0.0, base_eval - seq["eval_s"]))
    quality = {"sequential/stopped": 1.0, "sequential/look": float(seq["look"]),
               "sequential/docs_evaluated": float(seq["docs_evaluated"]), "sequential/docs_total": float(total),
               "sequential/docs_saved_frac": (total - seq["docs_evaluated"]) / total}
    if early["eval_s_saved"] is not None:
        quality["sequential/eval_s_saved"] = early["eval_s_saved"]
    return quality, early


def _reask_failing(job: Job, evaluate_docs, base: dict | None, quality: dict, tasks: list[str]) -> dict:
    """For each gated lm-eval check the full evaluation fails, the docs where the variant's answer differs
    from the baseline's are asked once more, uncached (`evaluate_docs`): a lossy variant answers them the
    same way again, an engine that does not reproduce its own greedy results does not (seen on an H100:
    vLLM draft speculation flipped 4 of 400 fx_add answers in one scheduled run, the baseline's in every
    other, docs/results/h100-2026-11-26-27). The verdict stays the gate's; the gate's reason names the
    changed docs. Returns `recheck/docs` and `recheck/changed_docs` (none when no check fails); each task
    asked again goes to unreproducible.json with the phase "gate". Costs only the differing docs of a
    failing check."""
    from evalgate import gate
    from evalgate.results import sample_values
    from evalgate.sequential import differing

    if base is None or job.baseline is None:
        return {}
    cfg, out = job.cfg, job.out
    var = {**out.load(), "metrics": quality, "status": {"ok": True}}
    failing = [c["metric"] for c in gate.check_quality(cfg.thresholds, cfg.gate.get("statistics", {}), cfg.seed,
                                                       base, var) if not c["passed"]]
    asked, changed, record = 0, 0, []
    for key in dict.fromkeys(k for k in failing if k.startswith("lmeval/")):   # lmeval/<task>/<metric>/<filter>
        _, task, metric, flt = key.split("/")
        if task not in tasks:
            continue
        mine = sample_values(out.samples(task) or [], metric, flt)
        theirs = sample_values(job.baseline.samples(task) or [], metric, flt)
        differ = sorted(differing({d: v for d, v in mine.items() if d in theirs}, theirs))
        if not differ:
            continue
        again = sample_values(evaluate_docs({task: differ}).get(task, []), metric, flt)
        moved = differing({d: mine[d] for d in differ}, again)
        asked, changed = asked + len(differ), changed + len(moved)
        record.append({"phase": "gate", "task": task, "metric": key, "docs": len(differ),
                       "changed_docs": len(moved), "changed": moved[:50]})
    if record and changed:
        out.write("unreproducible.json", (out.read("unreproducible.json") or []) + record)
    return {"recheck/docs": float(asked), "recheck/changed_docs": float(changed)} if record else {}


def profile(job: Job, ep, sweep: str = "") -> dict:
    """The load sweep; writes profile.json (`sweep` "aa": profile_aa.json, the baseline's second, A/A
    sweep; "alone": profile_alone.json, its third with no other server up). Each level's headline goes
    to the MLflow run as soon as it is measured."""
    from evalgate.profile import sweep as load_sweep

    repeat = bool(sweep)

    cfg = job.cfg
    if job.tracker is not None and not repeat:
        job.tracker.phase("profile")
    requests = [json.loads(line) for line in open(job.workload)]
    base_peak = None
    if job.baseline is not None:
        base_peak = job.baseline.metrics().get("request_throughput")
    elif repeat:   # the baseline's A/A sweep meets the arrival rates of its first one, or its rate levels
        # would compare two different loads (seen on an H100: they inherited the c128 difference)
        base_peak = ((job.out.profile() or {}).get("summary") or {}).get("request_throughput")
    levels_done = []
    from evalgate.progress import bar

    steps = bar(total=len(cfg.load.get("concurrency", [1])) + len(cfg.load.get("rates", [])),
                desc=f"{job.variant.name} load sweep{f' ({sweep})' if repeat else ''}", unit="level")

    def progress(level: dict) -> None:
        levels_done.append(level["name"])
        errors = [r.get("error", "?") for r in level["requests"] if not r.get("ok", True)]
        if errors:   # a failed request is missing load: the level measured less than it was meant to
            steps.write(f"run {job.variant.name}: {level['name']}{f' ({sweep})' if repeat else ''}: "
                        f"{len(errors)} of {len(level['requests'])} requests failed; the first: {errors[0]}")
        steps.set_postfix_str(f"{level['name']}: {level['summary']['output_throughput']:.1f} tok/s")
        steps.update()
        # the A/A and alone sweeps' own values as `sweep_aa/<level>/…`: `aa/<level>/…` is the difference in %
        prefix = f"sweep_{sweep}/{level['name']}" if repeat else level["name"]
        _track(job, {f"{prefix}/{k}": v for k, v in level["summary"].items()
                     if k in ("output_throughput", "request_throughput", "request_goodput", "median_ttft_ms",
                              "median_tpot_ms", "median_e2el_per_token_ms", "p99_e2el_ms", "ci_pct")})
        _track(job, {"progress/profile_levels": len(levels_done)})

    try:
        res = load_sweep(ep, requests, cfg.load, cfg.slo, bool(cfg.workload.get("ignore_eos", False)),
                    base_peak_rps=base_peak, progress=progress)
    finally:
        steps.close()
    res["stats"] = ep.stats()
    if not repeat:
        res["stats"].update(ep.engine_bench())
    if job.baseline is not None:
        res["summary"].update(output_agreement(job.baseline.profile(), res))
    for lv in res["levels"][1:]:     # token gaps are summarised already; the first level keeps them whole
        for r in lv["requests"]:
            r.pop("itl", None)
    job.out.write_profile(res, sweep)
    return res


def output_agreement(base: dict | None, var: dict) -> dict[str, float]:
    """Against the baseline's first level (concurrency 1, greedy, the same prompts): the share of
    identical outputs (speculation must give 1.0: it is lossless) and the output-length ratio (a
    variant must not win speed by answering short or long; MLPerf requires 0.9–1.1)."""
    if not base or not base.get("levels") or not var.get("levels"):
        return {}
    b = {r["index"]: r for r in base["levels"][0]["requests"] if r.get("ok", True)}
    v = {r["index"]: r for r in var["levels"][0]["requests"] if r.get("ok", True)}
    common = sorted(b.keys() & v.keys())
    if not common:
        return {}
    produced = sum(v[i]["output_tokens"] for i in common)
    out = {"output_length_ratio": produced / max(1, sum(b[i]["output_tokens"] for i in common))}
    texts = [i for i in common if "text" in b[i] and "text" in v[i]]
    if texts:
        out["identical_output_share"] = sum(b[i]["text"] == v[i]["text"] for i in texts) / len(texts)
    return out


AA_METRICS = ("output_throughput", "request_throughput", "request_goodput")
SWEEP_KEYS = ("/output_throughput", "/host_steal_pct", "/cpu_probe_us", "/sm_clock_mhz")


def aa_floor(first: dict, second: dict, prefix: str = "aa") -> dict[str, float]:
    """The A/A noise floor: |A − A′| / mean, in %, per speed metric (throughputs, goodput, latency
    medians and tails, per level and headline) of two sweeps of the baseline (`prefix`/<metric>)."""
    a, b = first["summary"], second["summary"]
    out = {}
    for k in sorted(a.keys() & b.keys()):
        bare = k.rsplit("/", 1)[-1]
        if not (bare in AA_METRICS or (bare.endswith("_ms") and bare.split("_")[0] in ("median", "p90", "p99"))):
            continue
        x, y = a[k], b[k]
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and (x + y):
            out[f"{prefix}/{k}"] = 100 * abs(x - y) / (abs(x + y) / 2)
    return out


def finish(job: Job, times: dict[str, float], final: bool = True) -> dict:
    """metrics.json and status.json from quality.json and profile.json (profile_aa.json); with `final`,
    the MLflow run is closed (the scheduler writes an interim one for the baseline first)."""
    out = job.out
    q = out.quality() or {"metrics": {}, "times": {}, "early": None}
    prof = out.profile()
    metrics: dict[str, float] = dict(q["metrics"])
    if prof is not None:
        metrics.update(prof["summary"])
        metrics.update(prof.get("stats", {}))
        for sweep in AGAIN:   # alone: the first sweep (idle neighbours) against one alone
            again = out.profile(sweep)
            if again is not None:
                metrics.update(aa_floor(prof, again, sweep))
                # that sweep's throughput beside the host's state (steal, CPU speed, the card's clock): the
                # report shows what moved between the two sweeps of one server
                metrics.update({f"sweep_{sweep}/{k}": v for k, v in again["summary"].items()
                                if k.endswith(SWEEP_KEYS)})
    metrics.update({f"time/{k}": v for k, v in {**q["times"], **times}.items()})
    out.write_metrics(metrics)
    out.succeed(q.get("early"))
    if final and job.tracker is not None:
        job.tracker.close(True, metrics, artifacts=out.path)
    return metrics


def fail(job: Job, phase: str, error: str, trace: str | None = None, transient: str | None = None) -> None:
    """A failed phase: status.json says which and why (and, for a transient failure, its kind: not a
    final answer, evalgate.faults); the MLflow run ends FAILED. A write the disk refuses is not a
    second failure: the caller has the first one."""
    with contextlib.suppress(OSError):
        job.out.fail(phase, error, trace, **({"transient": transient} if transient else {}))
    if job.tracker is not None:
        job.tracker.close(False, error=f"{phase}: {error}" + (f" (transient: {transient})" if transient else ""),
                          artifacts=job.out.path)


def attached_quality(cfg: Config, name: str, out: VariantResults, workload: Path, reference: Path,
                     baseline: VariantResults | None, engine, record: Path) -> int:
    """The scheduler's worker: the quality phase against a server another process started and holds
    (the variant's folder was prepared by the scheduler and holds the server log: nothing is cleared).
    It logs to the variant's MLflow run, which the scheduler opened and will close."""
    from evalgate.evaluate import task_manager

    job = Job(cfg, cfg.variant(name), cfg.model, out, workload, reference,
              baseline if name != BASELINE else None, task_manager(cfg.eval["tasks"], cfg.eval.get("include_path")),
              VariantRun.attach(out.tracking(), cfg.mlflow))
    try:
        quality(job, engine.attach(json.loads(record.read_text())))
    except Exception as e:  # noqa: BLE001 - recorded; the scheduler fails this variant only (and retries a transient one)
        kind = classify(e)
        with contextlib.suppress(OSError):
            out.fail("quality", f"{type(e).__name__}: {e}", traceback.format_exc(), **({"transient": kind} if kind else {}))
        return EX_TEMPFAIL if kind else 0
    return 0


def run_serial(job: Job, engine, lane: Lane | None = None) -> int:
    """Serve once, then quality, profile (twice for the baseline when `load.aa`), finish. Any failure is
    recorded (status.json). Returns the worker's exit code: 0 when it finished or failed for good (the
    stage exits 0, so the other variants run and DVC keeps the rejection), 75 for a transient failure
    (evalgate.faults: the supervisor retries it, and DVC does not cache it). The phases go to
    timeline.json, as the scheduler's do, so the report draws serial and scheduled runs alike. `lane`:
    its place beside other variants (evalgate.lanes; the worker takes it before preparing), held shared
    throughout but for the profile, which holds it alone."""
    lane = lane or Lane(engine)   # side by side with other variants, or alone as under `dvc repro`
    lane.share()
    phase, times, t_all = "start", {}, time.perf_counter()
    events: list[dict] = []
    name = job.variant.name
    track(job)

    def mark(phase: str, t0: float) -> None:
        events.append({"phase": phase, "start": t0, "end": time.time()})

    from evalgate.progress import bar

    phases = bar(total=3, desc=f"run {name}", unit="phase", postfix="serve")   # serve, quality, profile
    t0 = time.time()
    try:
        with engine.serve(job.model, job.variant, job.out.path) as ep:
            times["start_s"] = ep.info.start_seconds
            mark("start", t0)
            phase, t0 = "quality", time.time()
            phases.set_postfix_str("quality")
            phases.update()
            q = quality(job, ep)
            mark("quality", t0)
            if retry_alone(job.cfg, job.out):   # serially it already had the device to itself
                print(f"run {name}: its evaluation was not reproducible ({job.out.set_aside_quality()} docs "
                      "changed between identical requests): evaluating once more", flush=True)
                t0 = time.time()
                q = quality(job, ep)
                mark("quality_again", t0)
            phases.update()
            if not q["early"]:
                phases.set_postfix_str("profile")
                lane.alone()   # waits until no other variant loads or evaluates
                phase, t, t0 = "profile", time.perf_counter(), time.time()
                profile(job, ep)
                mark("profile", t0)
                if job.is_baseline and job.cfg.load.get("aa"):
                    t0 = time.time()
                    profile(job, ep, "aa")
                    mark("profile_aa", t0)
                times["profile_s"] = time.perf_counter() - t
                lane.share()   # the rest (freeing the model, the results, MLflow) beside the others again
                phases.update()
    except Exception as e:  # noqa: BLE001 - any failure of one variant is recorded, never fatal to the rest
        phases.close()
        mark(phase, t0)
        kind = classify(e)
        error = f"{type(e).__name__}: {e}"
        print(f"run {name}: failed during {phase}: {error}" + (f" (transient: {kind})" if kind else ""), flush=True)
        with contextlib.suppress(OSError):
            job.out.write_timeline(name, events, times)
        fail(job, phase, error, traceback.format_exc(), transient=kind)
        tell_supervisor(kind, f"{phase}: {error}")
        lane.close()
        return EX_TEMPFAIL if kind else 0
    phases.close()
    times["total_s"] = time.perf_counter() - t_all
    try:
        job.out.write_timeline(name, events, times)
        m = finish(job, times)
    except OSError as e:  # a full disk refusing the last writes: nothing is recorded as finished
        kind = classify(e)
        error = f"{type(e).__name__}: {e}"
        print(f"run {name}: failed writing its results: {error}" + (f" (transient: {kind})" if kind else ""), flush=True)
        fail(job, "finish", error, traceback.format_exc(), transient=kind)
        tell_supervisor(kind, f"finish: {error}")
        lane.close()
        return EX_TEMPFAIL if kind else 0
    lane.close()
    early = job.out.status().get("early_rejection")
    speed = f"{m['output_throughput']:.1f} tok/s peak" if "output_throughput" in m else "not profiled"
    print(f"run {name}: {speed}; " + (early["reason"] if early else ", ".join(
        f"{k.removeprefix('lmeval/')}={v:.4g}" for k, v in m.items() if k.startswith("lmeval/") and "stderr" not in k)))
    return 0
