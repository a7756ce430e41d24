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

Unreachable tracking server: fail fast, never lose a verdict. Every stage that logs (`run`, `report`,
`repro`) first asks the tracking URI for any HTTP answer (`check_reachable`: one request, 5 s, no
retries); none is one line naming the URI (its password masked), exit 2, before any model loads. If
the server goes away during a run, MLflow's own retries are cut short (`limit_retries`: 2 retries, 10 s
each instead of 7 retries over ≈ 4 minutes), the first failed call turns tracking off for the rest of
that process (one line), and the variant goes on: its results and the gate's verdicts are files
(results/, reports/gate.json), and the report stage, when it next runs against a reachable server,
logs them from those files (a variant whose live run was cut off is completed and closed there).
`mlflow.enabled: false` runs without MLflow.

No secret reaches MLflow or a log line: URIs with a password, tokens and keys named like secrets are
masked (`redact`) in params, tags, error lines, tracking.json and the params.yaml artifact.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

PARAMS_TAG = "evalgate.params_id"
REPORT_TAG = "evalgate.report_id"
VARIANT_TAG = "variant"
PHASES = {"start": 1, "quality": 2, "profile": 3, "done": 4}
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # the UI opens on the runs, not Traces


# -- secrets ------------------------------------------------------------------------------------------------
SECRET_KEY = re.compile(r"(token|secret|password|passwd|api[_-]?key|credential|auth)", re.I)
_URI_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+):[^/\s@]+@")
_KEY_VALUE = re.compile(r"((?:token|secret|password|passwd|api[_-]?key)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}&]+", re.I)
_TOKENS = re.compile(r"\b(hf_[A-Za-z0-9]{16,}|sk-[A-Za-z0-9_-]{16,}|gh[pousr]_[A-Za-z0-9]{20,}|dapi[a-f0-9]{20,})\b")
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.I)


def redact(text):
    """A string with its secrets masked: URI passwords (`http://user:***@host`), `token=…`-style pairs,
    bearer tokens, Hugging Face / OpenAI / GitHub / Databricks tokens. Other values pass unchanged."""
    if not isinstance(text, str):
        return text
    text = _URI_PASSWORD.sub(r"\1:***@", text)
    text = _KEY_VALUE.sub(r"\1***", text)
    text = _BEARER.sub(r"\1***", text)
    return _TOKENS.sub("***", text)


def redact_tree(obj, key: str = ""):
    """A config (dict/list) with every value under a secret-looking key masked and every string redacted."""
    if isinstance(obj, dict):
        return {k: redact_tree(v, str(k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact_tree(v, key) for v in obj]
    if key and SECRET_KEY.search(key) and obj not in (None, "", False):
        return "***"
    return redact(obj)


# -- reachability, retries ------------------------------------------------------------------------------------
_OFF: list[str] = []  # set once a call failed in this process: tracking is off for the rest of it


def tracking_uri(options: dict) -> tuple[str, str]:
    """(the URI this process logs to, the key that set it) — params first, then the environment."""
    if options.get("tracking_uri"):
        return options["tracking_uri"], "mlflow.tracking_uri"
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"], "MLFLOW_TRACKING_URI"
    return "sqlite:///mlflow.db", "MLflow's default"


def limit_retries() -> None:
    """MLflow's HTTP client retries 7 times with exponential backoff (≈ 4 minutes against a dead
    server) with a 120 s timeout per try: 2 retries and 10 s per try here, unless set in the environment."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def check_reachable(options: dict, timeout_s: float = 5.0) -> None:
    """A tracking server that gives no HTTP answer is a one-line ConfigError naming the URI (password
    masked) and what to do, before anything runs. Local stores (sqlite, file) are always reachable."""
    from evalgate.config import ConfigError

    if not options.get("enabled", True):
        return
    uri, key = tracking_uri(options)
    if not uri.startswith(("http://", "https://")):
        return
    plain = _URI_PASSWORD.sub(r"\1@", uri)  # urllib does not take credentials in the URL
    try:
        with urllib.request.urlopen(plain.rstrip("/") + "/health", timeout=timeout_s):  # noqa: S310 - the user's URI
            return
    except urllib.error.HTTPError:
        return  # it answered (401, 404…): reachable; MLflow says the rest
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise ConfigError(
            f"{key}: {redact(uri)} is unreachable ({type(reason).__name__}: {redact(str(reason))[:120]}, "
            f"{timeout_s:g} s); start the server, point {key} at one that answers, or run without MLflow "
            f"(mlflow.enabled=false): results and verdicts are files either way, the report logs them when it runs again"
        ) from None


def _never_fatal(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _OFF:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - tracking is a view of the results, never a reason to lose them
            line = f"mlflow: {fn.__name__} failed: {type(e).__name__}: {redact(' '.join(str(e).split()))[:300]}"
            if _unreachable(e):
                _OFF.append(line)
                line += "; tracking is off for the rest of this process (the report logs the results later)"
            print(line, file=sys.stderr)
            return None

    return wrapper


def _unreachable(e: BaseException) -> bool:
    text = f"{type(e).__name__}: {e}"
    return bool(
        re.search(
            r"Max retries exceeded|Connection refused|NewConnectionError|Read timed out|"
            r"ConnectTimeout|Name or service not known|RemoteDisconnected",
            text,
        )
    )


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
    if prefix and SECRET_KEY.search(prefix.rsplit(".", 1)[-1]) and obj not in (None, "", False):
        return {prefix: "***"}
    text = obj if isinstance(obj, str) else json.dumps(redact_tree(obj), default=str)
    return {prefix: redact(text)[:6000]}


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

        limit_retries()
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
        system_metrics: bool = True,
    ) -> VariantRun | None:
        """`system_metrics` False: no monitor of its own (a scheduled run's variants share one host, which
        `host_metrics` logs once, to the parent)."""
        if not options.get("enabled", True):
            return None
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
        if system_metrics and options.get("system_metrics", True):
            monitor = _system_metrics(rid, exp.tracking_uri, float(options.get("system_metrics_interval_s", 5)))
        # tracking.json keeps the URI without its password: a quality worker gets the real one from its own
        # params and environment (`attach`)
        info = {
            "run_id": rid,
            "parent_run_id": parent.info.run_id,
            "experiment_id": exp.id,
            "tracking_uri": redact(exp.tracking_uri),
        }
        return cls(exp.client, rid, info, monitor)

    @classmethod
    @_never_fatal
    def attach(cls, info: dict | None, options: dict | None = None) -> VariantRun | None:
        if not info or (options is not None and not options.get("enabled", True)):
            return None
        import mlflow

        limit_retries()
        uri = info["tracking_uri"]
        if "***" in uri or options is not None:  # the stored URI is masked: this process's own settings
            uri = tracking_uri(options or {})[0]
        return cls(mlflow.MlflowClient(uri), info["run_id"], info)

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
            self.client.set_tag(self.run_id, "error", redact(error)[:5000])
        if artifacts is not None and Path(artifacts).is_dir():
            self.client.log_artifacts(self.run_id, str(artifacts), artifact_path="results")
        self.client.set_tag(self.run_id, "phase", "done" if ok else "failed")
        self.client.log_metric(self.run_id, "progress", PHASES["done"])
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


@_never_fatal
def host_metrics(options: dict, run_id: str):
    """MLflow's system metrics of this host, logged to one run (the parent of a scheduled run) while the
    variants run side by side. Why not one monitor per variant: they would all measure the same host at
    the same time, and each is a thread in the process whose asyncio loop times the profiles: seven of them
    stall that loop past 5 ms far more often than none (bench/client_lag.py; figures in the README).
    Returns the monitor (`finish()` it), or None when system metrics are off."""
    import mlflow

    if not options.get("enabled", True) or not options.get("system_metrics", True):
        return None
    # the URI the variants' runs were opened with (Experiment set it in this process)
    return _system_metrics(run_id, mlflow.get_tracking_uri(), float(options.get("system_metrics_interval_s", 5)))


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
    if not options.get("enabled", True):
        return None
    return _never_fatal(_log_report)(options, raw, parent_label, names, variant_params, results, gate, table, artifacts)


def _redacted_copy(p: Path, tmp: Path) -> Path:
    """`p`, or a copy with its secrets masked (params.yaml with a tracking URI that holds a password…)."""
    if p.suffix not in (".yaml", ".yml", ".json", ".md", ".txt", ".log") or not p.is_file() or p.stat().st_size > 2**22:
        return p
    text = p.read_text(errors="replace")
    clean = redact(text)
    if p.suffix in (".yaml", ".yml"):
        import yaml

        with contextlib.suppress(yaml.YAMLError):
            clean = yaml.safe_dump(redact_tree(yaml.safe_load(text)), sort_keys=False)
            if clean == yaml.safe_dump(yaml.safe_load(text), sort_keys=False):
                clean = text
    if clean == text:
        return p
    out = tmp / p.name
    out.write_text(clean)
    return out


def _log_report(options, raw, parent_label, names, variant_params, results, gate, table, artifacts):
    exp = Experiment(options)
    pid = digest(raw)
    loaded = {n: results.variant(n).load() for n in names}  # an unreadable file is a failed status, not a crash
    report_id = digest({"params": raw, "gate": gate, "variants": {n: [r["status"], r["metrics"]] for n, r in loaded.items()}})
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
            st = loaded[name]["status"]
            run.close(bool(st.get("ok")), loaded[name]["metrics"], st.get("error"), store.path)
        elif child.info.status == "RUNNING":  # its live run was cut off (tracking server away): completed from files
            st = loaded[name]["status"]
            VariantRun(client, child.info.run_id, {}).close(
                bool(st.get("ok")), loaded[name]["metrics"], st.get("error"), store.path
            )
            client.set_tag(child.info.run_id, "evalgate.completed_by_report", "true")
        rid = child.info.run_id
        client.set_tag(rid, "verdict", verdict["verdict"])
        client.set_tag(rid, "verdict_reason", redact(verdict["reason"])[:5000])
        client.log_metric(rid, "verdict/accepted", float(verdict["verdict"] == "accept"))
        for c in verdict["checks"]:
            if c.get("loss") is not None and math.isfinite(c["loss"]):
                client.log_metric(rid, f"gate/{c['metric'].removeprefix('lmeval/')}/loss", c["loss"])
    summary = next((p for p in artifacts if p.name == "summary.md"), None)
    tags = {
        "best_variant": gate["best"] or "none",
        "best_within_noise": ",".join(gate.get("best_within_noise") or [])[:250] or "none",
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
    with tempfile.TemporaryDirectory() as tmp:
        for p in artifacts:
            client.log_artifact(ppid, str(_redacted_copy(Path(p), Path(tmp))))
    client.set_terminated(ppid, "FINISHED")
    print(
        f"mlflow: logged this state as run {ppid} ({parent.info.run_name}) with {len(names)} nested runs; in the UI: "
        f"#/experiments/{exp.id}/runs?workflowType=machine_learning"
    )
    return ppid
