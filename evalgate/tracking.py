"""MLflow, live: one parent run per pipeline execution, one nested run per variant, opened when the
variant's run starts and fed while it runs; the report adds the verdicts and the summary at the end.

  parent  named after the model, the engine and the time (`fixtures/model · hf · 7 variants · …`),
          tagged with a hash of the composed params (`evalgate.params_id`). The first variant that
          runs opens it; every stage of the same execution finds it (the newest parent of these
          params that has no report yet); the report closes it with the summary (the run's
          description), the per-variant table (`log_table`: variants.json), the pictures, gate.json
          and params.yaml, and tags it with a hash of everything it logged (`evalgate.report_id`).
  child   one per variant, named after it, opened by its run (`evalgate run`, or the scheduler for the
          variants it runs side by side): MLflow system metrics on, the variant's full effective
          config as params (the same keys for every variant: the compare view has no sparse
          columns), the workload and the eval tasks as dataset inputs, `progress` (the phase: 1 start,
          2 quality, 3 profile, 4 done) and each phase's metrics as they come (fidelity, lm-eval, each
          load level), then every metric and the results folder as artifacts. The report adds the
          verdict: tag `verdict` (accept | reject) and metric `verdict/accepted` (1 | 0), both
          filterable in the UI (`tags.verdict = 'reject'`, `metrics.verdict/accepted = 1`).

A variant DVC did not re-run (its results come from the cache) gets a child from its files at report
time, tagged `evalgate.from_cache` and linked to the run that produced them. A re-run of an unchanged
state logs nothing: no stage runs, and a forced report finds its report id already logged.

Tracking never fails a variant: an MLflow error is one line on stderr and the pipeline goes on.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import sys
import time
from pathlib import Path

PARAMS_TAG = "evalgate.params_id"
REPORT_TAG = "evalgate.report_id"
VARIANT_TAG = "variant"
PHASES = {"start": 1, "quality": 2, "profile": 3, "done": 4}
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # the UI opens on the runs, not Traces


def _never_fatal(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - tracking is a view of the results, never a reason to lose them
            print(f"mlflow: {fn.__name__} failed: {type(e).__name__}: {str(e)[:300]}", file=sys.stderr)
            return None

    return wrapper


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def finite(metrics: dict) -> dict[str, float]:
    return {
        k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def flat_params(prefix: str, obj) -> dict[str, str]:
    """Nested config → `a.b.c` params (lists and empty mappings as JSON, values cut to MLflow's limit)."""
    if isinstance(obj, dict) and obj:
        out = {}
        for k, v in obj.items():
            out.update(flat_params(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    text = obj if isinstance(obj, str) else json.dumps(obj, default=str)
    return {prefix: text[:6000]}


def run_params(raw: dict, variant_params: dict) -> dict[str, str]:
    """A variant's full effective config: what every variant shares (model, engine, workload, load,
    eval, the gate's margins and SLO, seed) and its own fields (`variant.*`, dense)."""
    shared = {k: raw.get(k) for k in ("seed", "model", "engine", "workload", "load", "eval")}
    shared["gate"] = {k: (raw.get("gate") or {}).get(k) for k in ("quality", "slo", "sequential", "statistics")}
    return {**flat_params("", shared), **flat_params("variant", variant_params)}


class Experiment:
    """The experiment (`mlflow.experiment`, default `evalgate`) and its parents."""

    def __init__(self, options: dict):
        import mlflow

        if options.get("tracking_uri"):
            mlflow.set_tracking_uri(options["tracking_uri"])
        self.tracking_uri = mlflow.get_tracking_uri()
        self.client = mlflow.MlflowClient(self.tracking_uri)
        name = options.get("experiment", "evalgate")
        exp = self.client.get_experiment_by_name(name)
        self.id = (
            exp.experiment_id
            if exp
            else self.client.create_experiment(
                name,
                tags={
                    **EXPERIMENT_KIND,
                    "mlflow.note.content": "evalgate: one parent run per pipeline execution, one nested run "
                    "per variant (filter with tags.verdict = 'accept').",
                },
            )
        )

    def parents(self, params_id: str) -> list:
        """Parents of these params, newest first."""
        return self.client.search_runs([self.id], f"tags.`{PARAMS_TAG}` = '{params_id}'", order_by=["attributes.start_time DESC"])

    def open_parent(self, params_id: str, name: str):
        """This execution's parent: the newest one of these params not reported yet, or a new one."""
        for run in self.parents(params_id):
            if REPORT_TAG not in run.data.tags:
                return run
        return self.client.create_run(self.id, run_name=name, tags={PARAMS_TAG: params_id})

    def children(self, parent_id: str) -> dict:
        """The parent's current child per variant (superseded ones left out)."""
        runs = self.client.search_runs(
            [self.id], f"tags.`mlflow.parentRunId` = '{parent_id}'", order_by=["attributes.start_time DESC"]
        )
        out = {}
        for r in runs:
            name = r.data.tags.get(VARIANT_TAG)
            if name and "evalgate.superseded_by" not in r.data.tags and name not in out:
                out[name] = r
        return out


def description(summary: str, limit: int = 7800) -> str:
    """The summary as a run description: MLflow keeps 8,000 characters of a tag, so a longer one is cut
    at a line, saying where the whole of it is."""
    if len(summary) <= limit:
        return summary
    return summary[: summary.rfind("\n", 0, limit)] + "\n\n… (cut here: the whole report is summary.md among the artifacts)\n"


def parent_name(model_id: str, engine: str, n_variants: int) -> str:
    return f"{model_id} · {engine} · {n_variants} variants · {time.strftime('%Y-%m-%d %H:%M')}"


def _datasets(workload: Path | None, tasks: list[str], counts: dict | None):
    """The workload (the profile's requests) and the eval tasks, as MLflow dataset inputs."""
    import pandas as pd
    from mlflow.data import from_pandas
    from mlflow.entities import DatasetInput, InputTag

    out = []
    if workload is not None and Path(workload).exists():
        rows = [json.loads(line) for line in open(workload)]
        df = pd.DataFrame(
            [
                {
                    "source": r.get("source"),
                    "prompt": r["prompt"][:500],
                    "max_tokens": r.get("max_tokens"),
                    "stop": json.dumps(r.get("stop") or []),
                }
                for r in rows
            ]
        )
        ds = from_pandas(df, source=str(workload), name=f"workload ({Path(workload).name})")
        out.append(DatasetInput(ds._to_mlflow_entity(), [InputTag("mlflow.data.context", "profile")]))
    if tasks:
        df = pd.DataFrame([{"task": t, "docs": (counts or {}).get(t)} for t in tasks])
        ds = from_pandas(df, source="lm-eval tasks", name="eval tasks: " + ", ".join(tasks)[:200])
        out.append(DatasetInput(ds._to_mlflow_entity(), [InputTag("mlflow.data.context", "eval")]))
    return out


class VariantRun:
    """One variant's nested run. Opened by the process that runs the variant (`open`), reached from the
    scheduler's quality worker through `tracking.json` (`attach`)."""

    def __init__(self, client, run_id: str, info: dict, monitor=None):
        self.client, self.run_id, self.info, self.monitor = client, run_id, info, monitor

    @classmethod
    @_never_fatal
    def open(
        cls,
        options: dict,
        raw: dict,
        name: str,
        variant_params: dict,
        parent_label: str,
        *,
        workload: Path | None = None,
        tasks: list[str] | None = None,
        task_docs: dict | None = None,
    ) -> VariantRun:
        exp = Experiment(options)
        parent = exp.open_parent(digest(raw), parent_label)
        old = exp.children(parent.info.run_id).get(name)
        run = exp.client.create_run(
            exp.id, run_name=name, tags={"mlflow.parentRunId": parent.info.run_id, VARIANT_TAG: name, "phase": "start"}
        )
        if old is not None:  # the same variant run again in this execution: the newer one counts
            exp.client.set_tag(old.info.run_id, "evalgate.superseded_by", run.info.run_id)
            exp.client.set_tag(old.info.run_id, "mlflow.runName", f"{name} (superseded)")
        rid = run.info.run_id
        params = run_params(raw, variant_params)
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):
            exp.client.log_batch(rid, params=items[i : i + 100])
        datasets = _datasets(workload, tasks or [], task_docs)
        if datasets:
            exp.client.log_inputs(rid, datasets=datasets)
        exp.client.log_metric(rid, "progress", PHASES["start"])
        monitor = None
        if options.get("system_metrics", True):
            monitor = _system_metrics(rid, exp.tracking_uri, float(options.get("system_metrics_interval_s", 5)))
        info = {"run_id": rid, "parent_run_id": parent.info.run_id, "experiment_id": exp.id, "tracking_uri": exp.tracking_uri}
        return cls(exp.client, rid, info, monitor)

    @classmethod
    @_never_fatal
    def attach(cls, info: dict | None) -> VariantRun | None:
        if not info:
            return None
        import mlflow

        return cls(mlflow.MlflowClient(info["tracking_uri"]), info["run_id"], info)

    @_never_fatal
    def phase(self, name: str) -> None:
        self.client.set_tag(self.run_id, "phase", name)
        self.client.log_metric(self.run_id, "progress", PHASES[name])

    @_never_fatal
    def metrics(self, metrics: dict, step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step or 0) for k, v in finite(metrics).items()]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i : i + 500])

    @_never_fatal
    def close(self, ok: bool, metrics: dict | None = None, error: str | None = None, artifacts: Path | None = None) -> None:
        """The variant's run ended: its metrics, its results folder, FINISHED or FAILED."""
        if self.monitor is not None:
            with contextlib.suppress(Exception):
                self.monitor.finish()
        if metrics:
            self.metrics(metrics)
        if error:
            self.client.set_tag(self.run_id, "error", error[:5000])
        if artifacts is not None and Path(artifacts).is_dir():
            self.client.log_artifacts(self.run_id, str(artifacts), artifact_path="results")
        self.client.set_tag(self.run_id, "phase", "done" if ok else "failed")
        self.client.log_metric(self.run_id, "progress", PHASES["done"])
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


def _system_metrics(run_id: str, tracking_uri: str, interval_s: float):
    """MLflow's system metrics (CPU, memory, disk, network; GPU through NVML where there is one) for
    the time the variant runs."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, samples_before_logging=1, tracking_uri=tracking_uri)
    monitor.start()
    return monitor


def log_report(
    options: dict,
    raw: dict,
    parent_label: str,
    names: list[str],
    variant_params: dict[str, dict],
    results,
    gate: dict,
    table: list[dict],
    artifacts: list[Path],
) -> str | None:
    """The report stage's part: close this execution's parent with the summary, the per-variant table
    and the pictures; give every variant its verdict (a child from its files where DVC did not re-run
    it). Logs nothing when this very state was reported already."""
    return _never_fatal(_log_report)(options, raw, parent_label, names, variant_params, results, gate, table, artifacts)


def _log_report(options, raw, parent_label, names, variant_params, results, gate, table, artifacts):
    exp = Experiment(options)
    pid = digest(raw)
    report_id = digest(
        {"params": raw, "gate": gate, "variants": {n: [results.variant(n).status(), results.variant(n).metrics()] for n in names}}
    )
    runs = exp.parents(pid)
    for r in runs:
        if r.data.tags.get(REPORT_TAG) == report_id:
            print(f"mlflow: this state is logged already (run {r.info.run_id}); nothing to log")
            return r.info.run_id
    parent = exp.open_parent(pid, parent_label)
    ppid = parent.info.run_id
    client = exp.client
    children = exp.children(ppid)
    for name in names:
        store = results.variant(name)
        verdict = gate["variants"][name]
        child = children.get(name)
        if child is None:  # not run in this execution: its results come from DVC's cache
            first = (store.tracking() or {}).get("run_id", "unknown")
            child = client.create_run(
                exp.id,
                run_name=name,
                tags={
                    "mlflow.parentRunId": ppid,
                    VARIANT_TAG: name,
                    "evalgate.from_cache": "true",
                    "evalgate.first_logged_as": first,
                    "phase": "done",
                },
            )
            run = VariantRun(client, child.info.run_id, {})
            from mlflow.entities import Param

            items = [Param(k, v) for k, v in run_params(raw, variant_params[name]).items()]
            for i in range(0, len(items), 100):
                client.log_batch(child.info.run_id, params=items[i : i + 100])
            run.close(bool(store.status().get("ok")), store.metrics(), store.status().get("error"), store.path)
        rid = child.info.run_id
        client.set_tag(rid, "verdict", verdict["verdict"])
        client.set_tag(rid, "verdict_reason", verdict["reason"][:5000])
        client.log_metric(rid, "verdict/accepted", float(verdict["verdict"] == "accept"))
        for c in verdict["checks"]:
            if c.get("loss") is not None and math.isfinite(c["loss"]):
                client.log_metric(rid, f"gate/{c['metric'].removeprefix('lmeval/')}/loss", c["loss"])
    summary = next((p for p in artifacts if p.name == "summary.md"), None)
    tags = {
        "best_variant": gate["best"] or "none",
        REPORT_TAG: report_id,
        "accepted": ",".join(n for n, v in gate["variants"].items() if v["verdict"] == "accept")[:5000],
    }
    tags.update(
        {
            f"best.{k}": (v["best"] or "no difference: " + ",".join(v["no_difference"]))[:250]
            for k, v in (gate.get("best_per_level") or {}).items()
        }
    )
    if summary is not None:
        tags["mlflow.note.content"] = description(summary.read_text())  # the run's description in the UI
    for k, v in tags.items():
        client.set_tag(ppid, k, v)
    from mlflow.entities import Param

    params = flat_params("", {k: raw.get(k) for k in ("seed", "model", "engine", "workload", "load", "eval")})
    params["variants"] = ",".join(names)[:6000]
    logged = set(parent.data.params)
    items = [Param(k, v) for k, v in params.items() if k not in logged]
    for i in range(0, len(items), 100):
        client.log_batch(ppid, params=items[i : i + 100])
    client.log_metric(ppid, "variants_accepted", sum(v["verdict"] == "accept" for v in gate["variants"].values()))
    client.log_metric(ppid, "variants_total", len(gate["variants"]))
    import pandas as pd

    client.log_table(ppid, pd.DataFrame(table), "variants.json")
    for p in artifacts:
        client.log_artifact(ppid, str(p))
    client.set_terminated(ppid, "FINISHED")
    print(
        f"mlflow: logged this state as run {ppid} ({parent.info.run_name}) with {len(names)} nested runs; in the UI: "
        f"#/experiments/{exp.id}/runs?workflowType=machine_learning"
    )
    return ppid
