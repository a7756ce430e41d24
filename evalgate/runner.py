"""One variant's work in phases, shared by the serial `run@<variant>` stage and the scheduler.

  prepare   validate, resolve the model, ask the engine whether it can run the variant (nothing loads)
  quality   cheap checks first: the fidelity screen (next-token KL and top-1 agreement against the
            baseline), then lm-eval (the gated tasks in sequential looks, then the rest), then answer
            flips; a variant that is already clearly worse stops here and is never profiled
  profile   the load sweep (evalgate.profile); the baseline's is run twice (A/A: the noise floor)
  finish    metrics.json + status.json from what the phases wrote

Each phase writes its own file in the variant's results folder (quality.json, profile.json, …), so
phases can run in different processes (the scheduler's workers) and a failure in one keeps the rest.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from evalgate.config import BASELINE, Config, ModelSpec, Variant


@dataclass
class Job:
    cfg: Config
    variant: Variant
    model: ModelSpec
    out: Path
    workload: Path
    reference: Path
    baseline: Path | None    # the baseline's results (None for the baseline itself)
    tm: object               # lm-eval TaskManager

    @property
    def is_baseline(self) -> bool:
        return self.variant.name == BASELINE


def write(out: Path, name: str, obj) -> None:
    (out / name).write_text(json.dumps(obj, indent=1))


def read(out: Path, name: str) -> dict | None:
    f = out / name
    return json.loads(f.read_text()) if f.exists() else None


def fail(out: Path, phase: str, error: str, **extra) -> None:
    write(out, "status.json", {"ok": False, "phase": phase, "error": error[:2000], **extra})


def skipped_tasks(cfg: Config, skip: dict[str, str], tm) -> dict[str, str]:
    """Tasks of eval.tasks whose output type the engine cannot evaluate (`skip`: type → why) → why; a
    gated one is a ConfigError (one line, before anything loads)."""
    from evalgate import sequential
    from evalgate.config import ConfigError
    from evalgate.evaluate import output_types

    if not skip:
        return {}
    out = {t: f"{kind}: {skip[kind]}" for t, kind in output_types(tm, cfg.eval["tasks"]).items() if kind in skip}
    for t in sequential.gated_tasks(cfg):
        if t in out:
            raise ConfigError(f"gate.quality: task {t!r} is gated but engine {cfg.engine['name']!r} cannot evaluate "
                              f"it ({out[t]}); drop it from eval.tasks and gate.quality (preset=llamacpp does)")
    return out


def prepare(cfg: Config, name: str, out: Path, workload: Path, reference: Path, checkpoint: str | None,
            baseline: Path | None, engine, gguf: str | None = None) -> Job | None:
    """Checks that fail fast (ConfigError: one line, exit 2); a variant the engine cannot run, or whose
    quantization failed, gets its status.json now and None back (rejected with the reason). `gguf`: the
    gguf stage's folder (the GGUF files a llama.cpp engine serves)."""
    import shutil

    from evalgate.engines.base import VariantUnsupported
    from evalgate.evaluate import task_manager
    from evalgate.models import resolve_model, served_model

    variant = cfg.variant(name)
    engine.preflight()                                                # engine not installed → ConfigError
    marker = Path(checkpoint or "-") / "checkpoint.json"
    quant_error = json.loads(marker.read_text()).get("error") if marker.exists() else None
    model = cfg.model if quant_error else served_model(cfg.model, variant, checkpoint, gguf)
    resolve_model(model)                                              # missing path / offline hub → ConfigError
    tm = task_manager(cfg.eval["tasks"], cfg.eval.get("include_path"))  # unknown task → ConfigError
    skipped_tasks(cfg, engine.skipped_output_types, tm)               # a gated task it cannot run → ConfigError
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    write(out, "variant.json", {"name": variant.name, **variant.as_params()})
    if quant_error:
        print(f"run@{name}: quantization failed: {quant_error}")
        fail(out, "quantize", quant_error)
        return None
    try:
        engine.check(model, variant)
    except VariantUnsupported as e:
        print(f"run@{name}: not supported: {e}")
        fail(out, "check", str(e))
        return None
    base = Path(baseline) if baseline and name != BASELINE else None
    return Job(cfg, variant, model, out, Path(workload), Path(reference), base, tm)


def _baseline_ok(job: Job) -> dict | None:
    if job.baseline is None:
        return None
    from evalgate.results import load_result

    base = load_result(job.baseline)
    return base if base["status"].get("ok") else None


def quality(job: Job, ep) -> dict:
    """Fidelity screen, lm-eval (sequential looks first), answer flips; writes quality.json.
    Returns it: `metrics`, `times`, and `early` (the early-rejection record) when it stopped."""
    from evalgate import fidelity

    cfg, out = job.cfg, job.out
    times: dict[str, float] = {}
    base = _baseline_ok(job)
    t = time.perf_counter()
    texts = [json.loads(line)["text"] for line in open(job.reference)]
    own = ep.reference_fidelity(texts, job.baseline if base is not None else None, out)  # an engine's own tool
    if own is None:
        fidelity.save(ep.prompt_logprobs(texts, cfg.eval.get("fidelity", {}).get("top_k", 20)), out / "fidelity.npz")
    times["fidelity_s"] = time.perf_counter() - t
    metrics: dict[str, float] = {}
    if base is not None:
        metrics.update(own if own is not None else fidelity.fidelity_metrics(job.baseline, out, logprobs_only=True))
        early = fidelity.screen(cfg, metrics)
        if early:
            return _done(out, metrics, times, early)
    t = time.perf_counter()
    lm_metrics, early = _evaluate(job, ep, base)
    times["eval_s"] = time.perf_counter() - t
    metrics.update(lm_metrics)
    if base is not None and not early:
        metrics.update(fidelity.fidelity_metrics(job.baseline, out, flips_only=True))
        early = fidelity.screen(cfg, metrics)
    return _done(out, metrics, times, early)


def _done(out: Path, metrics: dict, times: dict, early: dict | None) -> dict:
    q = {"metrics": metrics, "times": times, "early": early}
    write(out, "quality.json", q)
    return q


def _evaluate(job: Job, ep, base: dict | None) -> tuple[dict, dict | None]:
    """lm-eval through the served endpoint: (metrics, early-rejection record or None).

    With a baseline to compare against and gate.sequential on, the gated tasks are first evaluated in
    looks (evalgate.sequential); a stop skips the rest of the evaluation and records why, how many docs
    were evaluated and the time saved against the baseline's full evaluation."""
    from evalgate import sequential
    from evalgate.evaluate import doc_counts, evaluate, evaluate_docs, write_samples

    cfg, out, tm = job.cfg, job.out, job.tm
    lm = ep.lm_eval_model()
    skipped = skipped_tasks(cfg, ep.skipped_output_types, tm)
    tasks, limit = [t for t in cfg.eval["tasks"] if t not in skipped], cfg.eval.get("limit")
    if skipped:
        print(f"run@{job.variant.name}: skipped tasks: " + "; ".join(f"{t} ({why})" for t, why in skipped.items()))
        write(out, "skipped_tasks.json", skipped)
    full = dict(limit=limit, bootstrap_iters=cfg.eval.get("bootstrap_iters", 1000), seed=cfg.seed)
    gated = sequential.gated_tasks(cfg)
    if base is None or not sequential.enabled(cfg) or not gated:
        return evaluate(lm, tasks, tm, out, **full), None
    counts = doc_counts(tm, tasks, limit)
    with tempfile.TemporaryDirectory() as tmp:
        # lm-eval's request cache, shared by the looks and the full eval, where the endpoint allows it
        cache = str(Path(tmp) / "requests") if ep.request_cache else None
        seq = sequential.run(lambda docs: evaluate_docs(lm, docs, tm, cfg.seed, cache),
                             {t: counts[t] for t in gated}, cfg, job.baseline)
        if not seq["stopped"]:
            quality = evaluate(lm, tasks, tm, out, use_cache=cache, **full)
            return {**quality, "sequential/stopped": 0.0, "sequential/looks_eval_s": seq["eval_s"]}, None
    write_samples(seq["rows"], out)  # what the looks evaluated, for a reviewer to recompute the stop
    total = sum(counts.values())
    base_eval = base["metrics"].get("time/eval_s")
    early = {k: seq[k] for k in ("reason", "check", "look", "looks", "fraction", "alpha_per_look",
                                 "docs_evaluated", "eval_s")}
    early.update(kind="sequential", docs_total=total, docs_saved=total - seq["docs_evaluated"],
                 eval_s_saved=None if base_eval is None else max(0.0, base_eval - seq["eval_s"]))
    quality = {"sequential/stopped": 1.0, "sequential/look": float(seq["look"]),
               "sequential/docs_evaluated": float(seq["docs_evaluated"]), "sequential/docs_total": float(total),
               "sequential/docs_saved_frac": (total - seq["docs_evaluated"]) / total}
    if early["eval_s_saved"] is not None:
        quality["sequential/eval_s_saved"] = early["eval_s_saved"]
    return quality, early


def profile(job: Job, ep, repeat: bool = False, progress=None) -> dict:
    """The load sweep; writes profile.json (or profile_aa.json: the baseline's second, A/A sweep)."""
    from evalgate.profile import sweep

    cfg = job.cfg
    requests = [json.loads(line) for line in open(job.workload)]
    base_peak = None
    if job.baseline is not None:
        base = read(job.baseline, "metrics.json") or {}
        base_peak = base.get("request_throughput")
    res = sweep(ep, requests, cfg.load, cfg.slo, bool(cfg.workload.get("ignore_eos", False)),
                base_peak_rps=base_peak, progress=progress)
    res["stats"] = ep.stats()
    if not repeat:
        res["stats"].update(ep.engine_bench())
    if job.baseline is not None:
        res["summary"].update(output_agreement(read(job.baseline, "profile.json"), res))
    for lv in res["levels"][1:]:     # token gaps are summarised already; the first level keeps them whole
        for r in lv["requests"]:
            r.pop("itl", None)
    write(job.out, "profile_aa.json" if repeat else "profile.json", res)
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
    out = {"output_length_ratio": sum(v[i]["output_tokens"] for i in common) / max(1, sum(b[i]["output_tokens"] for i in common))}
    texts = [i for i in common if "text" in b[i] and "text" in v[i]]
    if texts:
        out["identical_output_share"] = sum(b[i]["text"] == v[i]["text"] for i in texts) / len(texts)
    return out


AA_METRICS = ("output_throughput", "request_throughput", "request_goodput")


def aa_floor(first: dict, second: dict) -> dict[str, float]:
    """The A/A noise floor: |A − A′| / mean, in %, per speed metric (throughputs, goodput, latency
    medians and tails, per level and headline) of the two baseline sweeps."""
    a, b = first["summary"], second["summary"]
    out = {}
    for k in sorted(a.keys() & b.keys()):
        bare = k.rsplit("/", 1)[-1]
        if not (bare in AA_METRICS or (bare.endswith("_ms") and bare.split("_")[0] in ("median", "p90", "p99"))):
            continue
        x, y = a[k], b[k]
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and (x + y):
            out[f"aa/{k}"] = 100 * abs(x - y) / (abs(x + y) / 2)
    return out


def finish(job: Job, times: dict[str, float]) -> dict:
    """metrics.json and status.json from quality.json and profile.json (profile_aa.json)."""
    out = job.out
    q = read(out, "quality.json") or {"metrics": {}, "times": {}, "early": None}
    prof = read(out, "profile.json")
    metrics: dict[str, float] = dict(q["metrics"])
    if prof is not None:
        metrics.update(prof["summary"])
        metrics.update(prof.get("stats", {}))
        aa = read(out, "profile_aa.json")
        if aa is not None:
            metrics.update(aa_floor(prof, aa))
    metrics.update({f"time/{k}": v for k, v in {**q["times"], **times}.items()})
    write(out, "metrics.json", metrics)
    early = q.get("early")
    write(out, "status.json", {"ok": True, **({"early_rejection": early} if early else {})})
    return metrics


def attached_quality(cfg: Config, name: str, out: Path, workload: Path, reference: Path, baseline: Path | None,
                     engine, record: Path) -> int:
    """The scheduler's worker: the quality phase against a server another process started and holds
    (the variant's folder was prepared by the scheduler and holds the server log: nothing is cleared)."""
    import traceback

    from evalgate.evaluate import task_manager

    job = Job(cfg, cfg.variant(name), cfg.model, out, workload, reference,
              baseline if name != BASELINE else None, task_manager(cfg.eval["tasks"], cfg.eval.get("include_path")))
    try:
        quality(job, engine.attach(json.loads(record.read_text())))
    except Exception as e:  # noqa: BLE001 - recorded; the scheduler fails this variant only
        (out / "error.log").write_text(traceback.format_exc())
        fail(out, "quality", f"{type(e).__name__}: {e}")
    return 0


def run_serial(job: Job, engine) -> int:
    """Serve once, then quality, profile (twice for the baseline when `load.aa`), finish. Any failure is
    recorded (status.json) and the stage still exits 0, so the other variants run. The phases go to
    timeline.json, as the scheduler's do, so the report draws serial and scheduled runs alike."""
    import traceback

    phase, times, t_all = "start", {}, time.perf_counter()
    events: list[dict] = []

    def mark(name: str, t0: float) -> None:
        events.append({"phase": name, "start": t0, "end": time.time()})

    t0 = time.time()
    try:
        with engine.serve(job.model, job.variant, job.out) as ep:
            times["start_s"] = ep.info.start_seconds
            mark("start", t0)
            phase, t0 = "quality", time.time()
            q = quality(job, ep)
            mark("quality", t0)
            if not q["early"]:
                phase, t, t0 = "profile", time.perf_counter(), time.time()
                profile(job, ep)
                mark("profile", t0)
                if job.is_baseline and job.cfg.load.get("aa"):
                    t0 = time.time()
                    profile(job, ep, repeat=True)
                    mark("profile_aa", t0)
                times["profile_s"] = time.perf_counter() - t
    except Exception as e:  # noqa: BLE001 - any failure of one variant is recorded, never fatal to the rest
        mark(phase, t0)
        (job.out / "error.log").write_text(traceback.format_exc())
        print(f"run@{job.variant.name}: failed during {phase}: {type(e).__name__}: {e}")
        fail(job.out, phase, f"{type(e).__name__}: {e}")
        write(job.out, "timeline.json", {"variant": job.variant.name, "events": events, "times": times})
        return 0
    times["total_s"] = time.perf_counter() - t_all
    write(job.out, "timeline.json", {"variant": job.variant.name, "events": events, "times": times})
    m = finish(job, times)
    early = (read(job.out, "status.json") or {}).get("early_rejection")
    speed = f"{m['output_throughput']:.1f} tok/s peak" if "output_throughput" in m else "not profiled"
    print(f"run@{job.variant.name}: {speed}; " + (early["reason"] if early else ", ".join(
        f"{k.removeprefix('lmeval/')}={v:.4g}" for k, v in m.items() if k.startswith("lmeval/") and "stderr" not in k)))
    return 0
