"""run@<variant>: serve one variant once, then profile and evaluate it through that same endpoint.

Bad config → one line, exit 2, before any model loads. A variant the engine cannot run, or one that
fails while running, is recorded in status.json (and rejected by the gate) and the stage exits 0, so
the other variants still run and nothing already produced is lost.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import traceback
from pathlib import Path

from evalgate import config
from evalgate.cli import stage_main


def _write(out: Path, name: str, obj) -> None:
    (out / name).write_text(json.dumps(obj, indent=1))


@stage_main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--workload", required=True)
    ap.add_argument("--reference", required=True, help="fidelity reference texts (JSONL)")
    ap.add_argument("--checkpoint", help="quantize@<variant>'s output: served instead of the model if it holds one")
    ap.add_argument("--baseline", help="the baseline stage's results: a variant's eval then stops early "
                    "once a gated metric is clearly inferior (gate.sequential)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    cfg = config.load(a.params)
    variant = cfg.variant(a.variant)

    from evalgate.engines import get_engine
    from evalgate.engines.base import VariantUnsupported
    from evalgate.evaluate import task_manager
    from evalgate.models import resolve_model, served_model

    engine = get_engine(cfg.engine["name"], cfg.engine)
    engine.preflight()                                                # engine not installed → ConfigError
    marker = Path(a.checkpoint or "-") / "checkpoint.json"
    quant_error = json.loads(marker.read_text()).get("error") if marker.exists() else None
    model = cfg.model if quant_error else served_model(cfg.model, variant, a.checkpoint)
    resolve_model(model)                                              # missing path / offline hub → ConfigError
    tm = task_manager(cfg.eval["tasks"], cfg.eval.get("include_path"))  # unknown task → ConfigError
    prompts = [json.loads(line) for line in open(a.workload)]
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    _write(out, "variant.json", {"name": variant.name, **variant.as_params()})
    if quant_error:
        print(f"run@{variant.name}: quantization failed: {quant_error}")
        _write(out, "status.json", {"ok": False, "phase": "quantize", "error": quant_error})
        return 0
    try:
        engine.check(model, variant)
    except VariantUnsupported as e:
        print(f"run@{variant.name}: not supported: {e}")
        _write(out, "status.json", {"ok": False, "phase": "check", "error": str(e)})
        return 0

    from evalgate import fidelity
    from evalgate.profile import profile_endpoint

    phase, times, t_all = "start", {}, time.perf_counter()
    try:
        with engine.serve(model, variant, out) as ep:
            times["start_s"] = ep.info.start_seconds
            phase, t = "profile", time.perf_counter()
            profile = profile_endpoint(ep, prompts, cfg.workload, Path(a.workload), out)
            times["profile_s"] = time.perf_counter() - t
            _write(out, "profile.json", profile)
            phase, t = "eval", time.perf_counter()
            quality, early = _evaluate(cfg, a, ep, tm, out)
            times["eval_s"] = time.perf_counter() - t
            phase, t = "fidelity", time.perf_counter()
            texts = [json.loads(line)["text"] for line in open(a.reference)]
            fidelity.save(ep.prompt_logprobs(texts, cfg.eval.get("fidelity", {}).get("top_k", 20)), out / "fidelity.npz")
            times["fidelity_s"] = time.perf_counter() - t
    except Exception as e:  # noqa: BLE001 - any failure of one variant is recorded, never fatal to the rest
        (out / "error.log").write_text(traceback.format_exc())
        print(f"run@{variant.name}: failed during {phase}: {type(e).__name__}: {e}")
        _write(out, "status.json", {"ok": False, "phase": phase, "error": f"{type(e).__name__}: {e}"[:2000]})
        return 0
    times["total_s"] = time.perf_counter() - t_all
    metrics = {**profile["summary"], **quality, **{f"time/{k}": v for k, v in times.items()}}
    _write(out, "metrics.json", metrics)
    _write(out, "status.json", {"ok": True, **({"early_rejection": early} if early else {})})
    print(f"run@{variant.name}: {metrics['output_throughput']:.1f} tok/s, " + (early["reason"] if early else
          ", ".join(f"{k.removeprefix('lmeval/')}={v:.4g}" for k, v in quality.items() if "stderr" not in k)))
    return 0


def _evaluate(cfg, a, ep, tm, out: Path) -> tuple[dict, dict | None]:
    """lm-eval through the served endpoint: (metrics, early-rejection record or None).

    With a baseline to compare against and gate.sequential on, the gated tasks are first evaluated in
    looks (evalgate.sequential); a stop skips the rest of the evaluation and records why, how many docs
    were evaluated and the time saved against the baseline's full evaluation."""
    from evalgate import sequential
    from evalgate.evaluate import doc_counts, evaluate, evaluate_docs, write_samples
    from evalgate.gate import load_result

    lm = ep.lm_eval_model()
    tasks, limit = cfg.eval["tasks"], cfg.eval.get("limit")
    full = dict(limit=limit, bootstrap_iters=cfg.eval.get("bootstrap_iters", 1000), seed=cfg.seed)
    base = load_result(Path(a.baseline)) if a.baseline else None
    gated = sequential.gated_tasks(cfg)
    if base is None or not base["status"].get("ok") or not sequential.enabled(cfg) or not gated:
        return evaluate(lm, tasks, tm, out, **full), None
    counts = doc_counts(tm, tasks, limit)
    with tempfile.TemporaryDirectory() as tmp:
        # lm-eval's request cache, shared by the looks and the full eval, where the endpoint allows it
        cache = str(Path(tmp) / "requests") if ep.request_cache else None
        seq = sequential.run(lambda docs: evaluate_docs(lm, docs, tm, cfg.seed, cache),
                             {t: counts[t] for t in gated}, cfg, Path(a.baseline))
        if not seq["stopped"]:
            quality = evaluate(lm, tasks, tm, out, use_cache=cache, **full)
            return {**quality, "sequential/stopped": 0.0, "sequential/looks_eval_s": seq["eval_s"]}, None
    write_samples(seq["rows"], out)  # what the looks evaluated, for a reviewer to recompute the stop
    total = sum(counts.values())
    base_eval = base["metrics"].get("time/eval_s")
    early = {k: seq[k] for k in ("reason", "check", "look", "looks", "fraction", "alpha_per_look",
                                 "docs_evaluated", "eval_s")}
    early.update(docs_total=total, docs_saved=total - seq["docs_evaluated"],
                 eval_s_saved=None if base_eval is None else max(0.0, base_eval - seq["eval_s"]))
    quality = {"sequential/stopped": 1.0, "sequential/look": float(seq["look"]),
               "sequential/docs_evaluated": float(seq["docs_evaluated"]), "sequential/docs_total": float(total),
               "sequential/docs_saved_frac": (total - seq["docs_evaluated"]) / total}
    if early["eval_s_saved"] is not None:
        quality["sequential/eval_s_saved"] = early["eval_s_saved"]
    return quality, early


if __name__ == "__main__":
    raise SystemExit(main())
