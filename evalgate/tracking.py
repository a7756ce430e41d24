"""MLflow: one parent run per pipeline result, one nested run per variant (baseline included).

Stages are separate processes, so everything is logged at the end (the report stage) from the
files the variants wrote. The parent is keyed by a sweep id — a hash of the composed params and every
variant's outputs — so logging the same pipeline state twice (`dvc repro -f report`, a re-run that
changed nothing) finds the existing parent and logs nothing.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

SWEEP_TAG = "evalgate.sweep_id"


def sweep_id(params: dict, result_dirs: dict[str, Path]) -> str:
    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for name in sorted(result_dirs):
        for f in ("status.json", "metrics.json"):
            p = result_dirs[name] / f
            h.update(name.encode() + (p.read_bytes() if p.exists() else b"-"))
    return h.hexdigest()[:16]


def _finite(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def log_sweep(cfg, results: dict[str, dict], result_dirs: dict[str, Path], gate: dict,
              parent_artifacts: list[Path]) -> str:
    """Log (once) and return the parent run id."""
    import mlflow

    if cfg.mlflow.get("tracking_uri"):
        mlflow.set_tracking_uri(cfg.mlflow["tracking_uri"])
    mlflow.set_experiment(cfg.mlflow.get("experiment", "evalgate"))
    sid = sweep_id(cfg.raw, result_dirs)
    found = mlflow.search_runs(filter_string=f"tags.`{SWEEP_TAG}` = '{sid}'", output_format="list")
    if found:
        print(f"mlflow: sweep {sid} already logged as run {found[0].info.run_id}; nothing to log")
        return found[0].info.run_id
    with mlflow.start_run(run_name=f"sweep-{sid[:8]}", tags={SWEEP_TAG: sid}) as parent:
        mlflow.log_params({"model.source": cfg.model.source, "model.id": cfg.model.id,
                           "engine": cfg.engine["name"], "eval.tasks": ",".join(cfg.eval["tasks"]),
                           "workload": cfg.workload.get("name", cfg.workload["source"]),
                           "load.concurrency": ",".join(map(str, cfg.load.get("concurrency", []))),
                           "load.rates": ",".join(map(str, cfg.load.get("rates", []))), "baseline": gate["baseline"]})
        per_level = {f"best.{k}": (v["best"] or "no difference: " + ",".join(v["no_difference"]))[:250]
                     for k, v in (gate.get("best_per_level") or {}).items()}
        mlflow.set_tags({"best_variant": gate["best"] or "none", **per_level,
                         "accepted": ",".join(n for n, v in gate["variants"].items() if v["verdict"] == "accept")})
        mlflow.log_metric("variants_accepted", sum(v["verdict"] == "accept" for v in gate["variants"].values()))
        mlflow.log_metric("variants_total", len(gate["variants"]))
        for p in parent_artifacts:
            mlflow.log_artifact(str(p))
        for name, verdict in gate["variants"].items():
            with mlflow.start_run(run_name=name, nested=True,
                                  tags={SWEEP_TAG + ".child": sid, "variant": name, "verdict": verdict["verdict"],
                                        "verdict_reason": verdict["reason"][:5000]}):
                mlflow.log_params({"variant": name, **cfg.variants[name].as_params()})
                mlflow.log_metrics(_finite({**results.get(name, {}).get("metrics", {}),
                                            **gate.get("fidelity", {}).get(name, {})}))
                mlflow.log_metric("gate/accepted", float(verdict["verdict"] == "accept"))
                for c in verdict["checks"]:
                    if c.get("loss") is not None and math.isfinite(c["loss"]):
                        mlflow.log_metric(f"gate/{c['metric'].removeprefix('lmeval/')}/loss", c["loss"])
                d = result_dirs.get(name)
                if d is not None and d.exists():
                    mlflow.log_artifacts(str(d), artifact_path="results")
        print(f"mlflow: logged sweep {sid} as run {parent.info.run_id} with {len(gate['variants'])} nested runs")
        return parent.info.run_id
