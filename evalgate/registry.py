"""The MLflow model registry: what a team deploys from.

  register  (the report stage) the gate's best *accepted* variant becomes a new version of the
            registered model (`mlflow.registered_model`, default `evalgate`), linked to its variant run,
            its source the run's `served/` artifact: the served configuration — `serve.json` (model
            reference, engine and its options, the variant's fields, the checkpoint) and, on the vLLM
            engine, `serve.sh` with the `vllm serve` command line, next to the quantized `checkpoint/`
            where the variant serves one. Tags: the variant, its verdict and reason, its config, its
            headline and gated metrics (`metric.<name>`), the gate result's hash (`evalgate.gate_id`).
            A rejected variant is never registered; the same gate result is registered once.
  promote   (`evalgate check --promote`, after the policy passed) the alias (`mlflow.alias`, default
            `champion`) moves to the version this gate result registered. Registering and promoting
            are two steps so that a pull request's run never moves what is deployed; `evalgate check`
            compares the run with the variant holding the alias (`deployed`).

Like evalgate.tracking, registering never fails the pipeline: an MLflow error is one line on stderr.
"""

from __future__ import annotations

import json
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path

from evalgate.tracking import _never_fatal, digest, finite

MODEL, ALIAS = "evalgate", "champion"
GATE_TAG = "evalgate.gate_id"


@dataclass(frozen=True)
class Deployed:
    """The variant in production: its name, where that came from, and the `rank_by` value recorded then."""

    variant: str
    source: str                   # e.g. "registry evalgate@champion (version 3)" or "gate.check.deployed"
    metric: float | None = None


def names(options: dict) -> tuple[str, str]:
    return options.get("registered_model") or MODEL, options.get("alias") or ALIAS


def _client(options: dict):
    import mlflow

    if options.get("tracking_uri"):
        mlflow.set_tracking_uri(options["tracking_uri"])
    return mlflow.MlflowClient(mlflow.get_tracking_uri())


def served_files(cfg, name: str, checkpoint: Path | None, out: Path) -> dict:
    """Write the served configuration of variant `name` into `out`; returns serve.json's content."""
    from evalgate.models import served_model

    variant = cfg.variant(name)
    has_ckpt = checkpoint is not None and (Path(checkpoint) / "config.json").exists()
    model = served_model(cfg.model, variant, str(checkpoint) if has_ckpt else None)
    # the checkpoint travels in the artifact (relative to serve.sh); a local model or draft is named by its
    # absolute path (serve.sh runs from its own folder), a hub model by its id
    ref = "checkpoint" if has_ckpt else (str(Path(model.id).resolve()) if model.source == "local" else model.id)
    draft = cfg.model.draft and (str(Path(cfg.model.draft).resolve()) if Path(cfg.model.draft).exists() else cfg.model.draft)
    conf = {"variant": name, "engine": cfg.engine, "model": {"id": ref, "source": "artifact" if has_ckpt else model.source,
            "revision": model.revision, "draft": draft, "dtype": cfg.model.dtype, "base": cfg.model.id},
            "variant_params": variant.as_params(), "checkpoint": "checkpoint" if has_ckpt else None}
    out.mkdir(parents=True, exist_ok=True)
    if cfg.engine.get("name") == "vllm":
        from evalgate.engines.vllm import serve_args

        args = serve_args(ref, draft, variant, cfg.engine)   # what the runner served
        conf["vllm_serve_args"] = args
        (out / "serve.sh").write_text("#!/usr/bin/env bash\n# the served configuration of variant "
                                      f"{name!r}, as gated: run it from this folder\ncd \"$(dirname \"$0\")\"\n"
                                      f"exec vllm serve {shlex.join(args)} \"$@\"\n")
        (out / "serve.sh").chmod(0o755)
    (out / "serve.json").write_text(json.dumps(conf, indent=1))
    if has_ckpt:
        import shutil

        shutil.copytree(checkpoint, out / "checkpoint", dirs_exist_ok=True)
    return conf


def version_tags(name: str, verdict: dict, metrics: dict, gated: list[str], gate_id: str, params_id: str,
                 conf: dict) -> dict[str, str]:
    """The model version's tags: what was gated and how it did, filterable in the registry's UI."""
    keep = {k: v for k, v in finite(metrics).items() if "/" not in k or k in gated}
    tags = {"variant": name, "verdict": verdict["verdict"], "verdict_reason": verdict["reason"][:5000],
            GATE_TAG: gate_id, "evalgate.params_id": params_id, "engine": str(conf["engine"].get("name")),
            "model": conf["model"]["base"], "config": json.dumps(conf["variant_params"], sort_keys=True)[:5000]}
    tags.update({f"metric.{k}": f"{v:.6g}" for k, v in sorted(keep.items())})
    return tags


@_never_fatal
def register_best(cfg, gate: dict, results, parent_run_id: str | None, checkpoints: Path) -> str | None:
    """Register the gate's best accepted variant (the report stage); returns the version, or None when
    there is none to register."""
    best = gate.get("best")
    if not best or gate["variants"].get(best, {}).get("verdict") != "accept":
        print("mlflow registry: no accepted best variant, nothing registered")
        return None
    if not parent_run_id:
        print("mlflow registry: no parent run (tracking failed), nothing registered")
        return None
    from mlflow.exceptions import MlflowException

    from evalgate.tracking import Experiment

    model, _ = names(cfg.mlflow)
    exp = Experiment(cfg.mlflow)
    client = exp.client
    gate_id = digest(gate)
    try:
        client.get_registered_model(model)
    except MlflowException:
        client.create_registered_model(model, description="evalgate: the best accepted variant of each gated run; "
                                       "the alias marks the deployed one (evalgate check --promote)")
    for mv in _versions_of(client, model, gate_id):
        print(f"mlflow registry: this gate result is registered already ({model} version {mv.version})")
        return mv.version
    child = exp.children(parent_run_id).get(best)
    if child is None:
        print(f"mlflow registry: no run of {best} under {parent_run_id}, nothing registered")
        return None
    rid = child.info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        conf = served_files(cfg, best, checkpoints / best, Path(tmp) / "served")
        client.log_artifacts(rid, str(Path(tmp) / "served"), artifact_path="served")
    gated = [th.metric if th.metric.startswith("fidelity/") else f"lmeval/{th.metric}" for th in cfg.thresholds]
    gated = [k for k in results.variant(best).metrics() if any(k.startswith(g) for g in gated)]
    tags = version_tags(best, gate["variants"][best], results.variant(best).metrics(), gated, gate_id,
                        digest(cfg.raw), conf)
    source = f"{client.get_run(rid).info.artifact_uri}/served"
    mv = client.create_model_version(model, source, run_id=rid, tags=tags,
                                     description=f"{best}: {gate['variants'][best]['reason'][:500]}")
    client.set_tag(rid, "registered_model_version", f"{model}/{mv.version}")
    print(f"mlflow registry: {best} registered as {model} version {mv.version} (source {source})")
    return mv.version


def this_version(options: dict, gate: dict):
    """The version registered from this gate result, or None."""
    model, _ = names(options)
    return next(iter(_versions_of(_client(options), model, digest(gate))), None)


def _versions_of(client, model: str, gate_id: str) -> list:
    """The versions registered from one gate result (a search on the tag: a team's registry grows)."""
    return client.search_model_versions(f"name = '{model}' and tags.`{GATE_TAG}` = '{gate_id}'")


def deployed(options: dict, rank_by: str) -> Deployed | None:
    """The variant holding the alias, with the `rank_by` value recorded on its version; None when the
    registered model or the alias does not exist yet."""
    from mlflow.exceptions import MlflowException

    model, alias = names(options)
    try:
        mv = _client(options).get_model_version_by_alias(model, alias)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):  # no such model, or no alias yet
            return None
        raise  # an unreachable server is not "nothing deployed"
    metric = mv.tags.get(f"metric.{rank_by}")
    return Deployed(mv.tags.get("variant", "?"), f"registry {model}@{alias}, version {mv.version}",
                    float(metric) if metric else None)


def promote(options: dict, gate: dict) -> str:
    """Move the alias to this gate result's version (only an accepted one); returns what was done."""
    model, alias = names(options)
    mv = this_version(options, gate)
    if mv is None:
        raise LookupError(f"no version of {model} registered from this gate result (did the report stage run "
                          "against this tracking server, and was a variant accepted?)")
    if mv.tags.get("verdict") != "accept":   # never: register_best registers accepted variants only
        raise LookupError(f"{model} version {mv.version} ({mv.tags.get('variant')}) is not accepted")
    _client(options).set_registered_model_alias(model, alias, mv.version)
    return f"{model}@{alias} → version {mv.version} ({mv.tags.get('variant')})"
