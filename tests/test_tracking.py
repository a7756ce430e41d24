"""MLflow, live, on a throwaway store: a variant's run opens under this execution's parent, the report
closes the parent and gives each variant its verdict (a child from its files when DVC did not re-run
it), and reporting the same state twice logs nothing."""
import json

import pytest

from evalgate import tracking
from evalgate.results import Results


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "t", "system_metrics": False}


RAW = {"seed": 0, "model": {"id": "m"}, "engine": {"name": "hf"}, "workload": {"source": "tasks"}, "load": {},
       "eval": {"tasks": ["t"]}, "gate": {"quality": {"t/acc": {"max_loss_abs": 0.02}}}}
VARIANT = {"dtype": "model", "quantization": "none", "engine_args": "{}"}


def finished(results, name, accuracy):
    d = results.variant(name)
    d.reset()
    d.write_metrics({"lmeval/t/acc/none": accuracy, "output_throughput": 10.0})
    d.succeed()
    return d


def gate(names):
    return {"baseline": "baseline", "best": "baseline", "best_per_level": {}, "best_within_noise": ["x", "y"],
            "variants": {n: {"verdict": "accept" if n == "baseline" else "reject", "reason": "r",
                             "checks": [{"metric": "lmeval/t/acc/none", "loss": 0.1, "passed": False}]}
                         for n in names}}


def test_live_runs_and_a_report_that_logs_once(tmp_path, store):
    import mlflow

    results = Results(tmp_path / "results")
    run = tracking.VariantRun.open(store, RAW, "baseline", VARIANT, "m · hf · 2 variants")
    run.phase("quality")
    run.metrics({"lmeval/t/acc/none": 0.9, "bad": float("nan")})
    finished(results, "baseline", 0.9).write_tracking(run.info)
    run.close(True, {"output_throughput": 10.0}, artifacts=results.variant("baseline").path)
    finished(results, "a", 0.8)                    # DVC's cache: no live run in this execution
    client = mlflow.MlflowClient(store["tracking_uri"])
    exp = client.get_experiment_by_name("t")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    (parent,) = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "RUNNING" and parent.info.run_name == "m · hf · 2 variants"
    summary = tmp_path / "summary.md"
    summary.write_text("# report")
    args = (store, RAW, "m · hf · 2 variants", ["baseline", "a"], {"baseline": VARIANT, "a": VARIANT}, results,
            gate(["baseline", "a"]), [{"variant": "baseline", "verdict": "accept"}], [summary])
    assert tracking.log_report(*args) == parent.info.run_id
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 3
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == {"baseline", "a"}
    assert children["a"].data.tags["evalgate.from_cache"] == "true"
    assert children["baseline"].data.params == children["a"].data.params
    assert children["a"].data.tags["verdict"] == "reject" and children["a"].data.metrics["verdict/accepted"] == 0
    assert children["baseline"].data.metrics["verdict/accepted"] == 1 and "bad" not in children["baseline"].data.metrics
    assert children["a"].data.metrics["gate/t/acc/none/loss"] == 0.1
    done = client.get_run(parent.info.run_id)
    assert done.info.status == "FINISHED" and done.data.tags["mlflow.note.content"] == "# report"
    assert done.data.tags["best_variant"] == "baseline" and done.data.tags["best_within_noise"] == "x,y"
    table = json.loads(client.download_artifacts(parent.info.run_id, "variants.json", str(tmp_path)) and
                       (tmp_path / "variants.json").read_text())
    assert table["columns"] == ["variant", "verdict"]
    assert tracking.log_report(*args) == parent.info.run_id          # the same state: nothing new
    assert len(client.search_runs([exp.experiment_id])) == 3
    # the next execution with these params gets a parent of its own; a variant run twice supersedes itself
    first = tracking.VariantRun.open(store, RAW, "a", VARIANT, "next")
    second = tracking.VariantRun.open(store, RAW, "a", VARIANT, "next")
    assert first.info["parent_run_id"] == second.info["parent_run_id"] != parent.info.run_id
    assert client.get_run(first.run_id).data.tags["evalgate.superseded_by"] == second.run_id


def test_tracking_never_fails_the_variant(capsys):
    broken = {"tracking_uri": "unknown-scheme://nowhere", "system_metrics": False}
    assert tracking.VariantRun.open(broken, RAW, "a", VARIANT, "x") is None
    assert "mlflow: open failed" in capsys.readouterr().err


def test_a_long_summary_is_cut_at_a_line_for_the_description():
    text = "".join(f"line {i}\n" for i in range(2000))
    cut = tracking.description(text)
    assert len(cut) < 8000 and cut.endswith("summary.md among the artifacts)\n") and "\nline 1\n" in cut
    assert tracking.description("short") == "short"


def test_a_worker_process_logs_to_the_run_its_scheduler_opened(tmp_path, store):
    """The scheduler opens a variant's run and writes its id to tracking.json; the quality worker (another
    process) attaches to it and logs its phase and metrics there; the scheduler closes it."""
    import subprocess
    import sys

    import mlflow

    run = tracking.VariantRun.open(store, RAW, "a", VARIANT, "p")
    info = json.dumps(run.info)
    code = ("import json, sys; from evalgate.tracking import VariantRun; "
            "r = VariantRun.attach(json.loads(sys.argv[1])); r.phase('quality'); r.metrics({'lmeval/t/acc/none': 0.5})")
    subprocess.run([sys.executable, "-c", code, info], check=True)
    run.close(True, {"output_throughput": 3.0})
    client = mlflow.MlflowClient(store["tracking_uri"])
    done = client.get_run(run.run_id)
    assert done.info.status == "FINISHED" and done.data.metrics["lmeval/t/acc/none"] == 0.5
    assert [m.value for m in client.get_metric_history(run.run_id, "progress")] == [1, 2, 4]
    assert tracking.VariantRun.attach(None) is None


def test_scheduled_variants_share_one_host_monitor_on_the_parent(tmp_path, store):
    """A scheduled run opens its variants' runs without system-metrics monitors of their own
    (`system_metrics=False`) and one monitor for the host on the parent (tracking.host_metrics); a serial
    variant keeps its own. Off in params (`mlflow.system_metrics: false`): no monitor at all."""
    on = {**store, "system_metrics": True, "system_metrics_interval_s": 1}
    shared = tracking.VariantRun.open(on, RAW, "a", VARIANT, "p", system_metrics=False)
    own = tracking.VariantRun.open(on, RAW, "b", VARIANT, "p")
    try:
        assert shared.monitor is None and own.monitor is not None
        host = tracking.host_metrics(on, shared.info["parent_run_id"])
        assert host is not None and host._run_id == shared.info["parent_run_id"]
        host.finish()
        assert tracking.host_metrics(store, shared.info["parent_run_id"]) is None
    finally:
        shared.close(True)
        own.close(True)


def test_mlflows_warnings_on_the_dataset_inputs_are_dropped(tmp_path):
    """evalgate.quiet.WARNINGS: the two UserWarnings MLflow raises for every variant's dataset inputs (a
    source its registry resolves twice, an integer-column schema hint) are not shown; without the filters
    they are."""
    import warnings

    from evalgate.quiet import quiet_third_party
    from evalgate.tracking import _datasets

    workload = tmp_path / "workload.jsonl"
    workload.write_text(json.dumps({"prompt": "1+1=", "max_tokens": 4, "source": "fx_add"}) + "\n")

    def shown(quiet: bool) -> list[str]:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            if quiet:
                quiet_third_party()
            assert len(_datasets(workload, ["fx_add"], {"fx_add": 1})) == 2
        return [str(w.message) for w in seen if "dataset source" in str(w.message) or "Inferred schema" in str(w.message)]

    assert shown(False)
    assert shown(True) == []
