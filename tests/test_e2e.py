"""The real pipeline on a tiny fixture: DVC (repro, no-op, one-variant change, exp run -S through
Hydra), lm-eval, gate, report and MLflow, asserted on the artifacts it leaves."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# prompt_lookup must be accepted (lossless), int2 must be rejected (2-bit weights move the perplexity)
VARIANTS = "variant=[prompt_lookup,int2]"
COMBOS = "combo=[]"
# margins a 24-doc evaluation can decide on this untrained model (it scores 0 on the generate tasks):
# absolute ones, in the nested spelling a Hydra override reaches (conf/gate/default.yaml)
QUALITY = [f"gate.quality.{t}.exact_match.max_loss_abs=0.3" for t in ("fx_add", "fx_copy", "fx_count")] + [
    "gate.quality.fx_recall.acc.max_loss_abs=0.3"]
TINY = ["fixture=tiny", "load=tiny", "workload.max_tokens=16", VARIANTS, COMBOS, "eval.limit=24", *QUALITY,
        # a variant the hf engine cannot run: rejected with its error, the others still run
        "+variants.unsupported.quantization.method=fp8",
        # MLflow's monitor logs its first sample after one interval (default 5 s): a tiny baseline run of
        # 4.7 s had none (a fresh clone, 2026-11-27), and test_mlflow_parent_and_nested_runs looks for them
        "+mlflow.system_metrics_interval_s=1"]


def sh(args, cwd, check=True):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    p = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and p.returncode:
        raise AssertionError(f"{args} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def mlflow_runs(proj):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{proj}/mlflow.db")
    return mlflow.search_runs(experiment_names=["evalgate"], output_format="list")


def copy_project(d: Path, overrides: list[str]) -> None:
    """A copy of the working tree (tracked + untracked-not-ignored files, no pipeline outputs) as its own
    git repo, with params.yaml composed from `overrides`."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    outputs = ("fixtures/", "results/", "reports/", "data/", "gguf/", "checkpoints/")
    for f in files:
        if (ROOT / f).is_file() and not f.startswith(outputs):
            (d / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, d / f)
    (d / "dvc.lock").unlink(missing_ok=True)
    sh(["git", "init", "-q"], d)
    sh([sys.executable, "-m", "evalgate", "compose", *overrides], d)


@pytest.fixture(scope="module")
def proj(tmp_path_factory):
    d = tmp_path_factory.mktemp("e2e") / "proj"
    copy_project(d, TINY)
    first = sh(["dvc", "repro"], d)
    return d, first.stdout


def test_pipeline_outputs(proj):
    d, _ = proj
    fx = json.loads((d / "fixtures/metrics.json").read_text())
    assert 0 <= fx["target_add_exact_match"] <= 1
    for v in ("baseline", "prompt_lookup"):
        assert json.loads((d / f"results/{v}/status.json").read_text()) == {"ok": True}
        m = json.loads((d / f"results/{v}/metrics.json").read_text())
        for k in ("median_ttft_ms", "p99_e2el_ms", "output_throughput", "c1/output_throughput", "c2/request_goodput",
                  "lmeval/fx_add/exact_match/none", "lmeval/fx_recall/acc/none", "lmeval/fx_ppl/word_perplexity/none",
                  "time/eval_s"):
            assert k in m, k
        # EOS respected by default: this fixture ends every answer at once, long before max_tokens (16)
        assert m["stopped_before_cap"] == 1.0 and m["mean_output_tokens"] < 16
        assert (d / f"results/{v}/samples_fx_add.jsonl").read_text().count("\n") == 24
        # the variant went through the sequential looks (not stopped: lossless), the baseline did not
        assert m.get("sequential/stopped") == (0.0 if v == "prompt_lookup" else None)
    gate = json.loads((d / "reports/gate.json").read_text())
    verdicts = {n: v["verdict"] for n, v in gate["variants"].items()}
    assert verdicts == {"baseline": "accept", "prompt_lookup": "accept", "int2": "reject", "unsupported": "reject"}
    assert "fx_ppl/word_perplexity" in gate["variants"]["int2"]["reason"]       # caught on the perplexity
    bad = gate["variants"]["unsupported"]
    assert "fp8" in bad["reason"]
    # the best is the accepted variant with the highest peak throughput, whichever it is on this CPU
    thr = {n: json.loads((d / f"results/{n}/metrics.json").read_text())["output_throughput"]
           for n in ("baseline", "prompt_lookup")}
    assert gate["best"] == max(thr, key=thr.get)
    summary = (d / "reports/summary.md").read_text()
    assert "`unsupported`" in summary and "Best accepted variant" in summary
    for png in ("pareto", "curves", "output_lengths", "timeline"):
        assert (d / f"reports/{png}.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Best per load level" in summary and "## Noise floor (A/A)" in summary


def test_mlflow_parent_and_nested_runs(proj):
    d, _ = proj
    runs = mlflow_runs(d)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.info.run_name for r in children) == ["baseline", "int2", "prompt_lookup", "unsupported"]
    base = next(r for r in children if r.info.run_name == "baseline")
    assert base.data.tags["verdict"] == "accept" and "output_throughput" in base.data.metrics
    import mlflow

    client = mlflow.MlflowClient()
    arts = {a.path for a in client.list_artifacts(base.info.run_id, "results")}
    assert {"results/lm_eval.json", "results/profile.json", "results/samples_fx_add.jsonl"} <= arts
    # live: opened when the variant's run started (before its first phase began), closed after its last
    # (was "lasted > 5 s": the baseline's whole run took 4.8 s on a faster CPU, 2026-11-26), with system
    # metrics, the full config, the inputs, progress
    events = json.loads((d / "results/baseline/timeline.json").read_text())["events"]
    assert base.info.start_time / 1000 <= min(e["start"] for e in events)
    assert base.info.end_time / 1000 >= max(e["end"] for e in events)
    assert any(k.startswith("system/cpu") for k in base.data.metrics) and base.data.metrics["progress"] == 4
    assert [h.value for h in client.get_metric_history(base.info.run_id, "progress")] == [1, 2, 3, 4]
    contexts = {i.tags[0].value for i in base.inputs.dataset_inputs}
    assert contexts == {"profile", "eval"}
    for r in children:   # the same params for every variant: no sparse columns in the compare view
        assert set(r.data.params) == set(base.data.params) and "variant.quantization" in r.data.params
        assert r.data.metrics["verdict/accepted"] == (r.data.tags["verdict"] == "accept")
    assert base.data.params["engine.name"] == "hf"
    bad = next(r for r in children if r.info.run_name == "unsupported")
    assert bad.info.status == "FAILED" and "fp8" in bad.data.tags["error"]
    # the non-baseline runs carry their verdicts and their measurements
    lossless = next(r for r in children if r.info.run_name == "prompt_lookup")
    assert lossless.data.tags["verdict"] == "accept" and lossless.data.metrics["verdict/accepted"] == 1
    assert "output_throughput" in lossless.data.metrics and lossless.data.metrics["fidelity/kl_mean"] == 0
    broken = next(r for r in children if r.info.run_name == "int2")
    assert broken.data.tags["verdict"] == "reject" and broken.data.metrics["verdict/accepted"] == 0
    assert broken.data.metrics["sequential/stopped"] == 1     # stopped at a look: never evaluated in full
    parent = parents[0]
    assert parent.info.run_name.startswith("fixtures/model · hf · 4 variants · ")
    assert "Best accepted variant" in parent.data.tags["mlflow.note.content"]
    assert "variants.json" in {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_ci_gate_and_registry(proj):
    """The report registered the best accepted variant (not the rejected int2); `evalgate check` exits 0
    by the default policy and 1 by a strict one, naming the rejected variants; `--promote` gives the
    winner the alias."""
    import mlflow

    d, _ = proj
    gate = json.loads((d / "reports/gate.json").read_text())
    client = mlflow.MlflowClient(f"sqlite:///{d}/mlflow.db")
    (mv,) = client.search_model_versions("name = 'evalgate'")
    assert mv.tags["variant"] == gate["best"] and mv.tags["verdict"] == "accept"
    assert client.get_run(mv.run_id).data.tags["variant"] == gate["best"]
    ok = sh([sys.executable, "-m", "evalgate", "check"], d, check=False)
    assert ok.returncode == 0 and ok.stdout.startswith("evalgate check: PASS"), ok.stdout + ok.stderr
    strict = yaml.safe_load((d / "params.yaml").read_text())
    strict["gate"]["check"] = {"fail_on": "any_rejected"}
    (d / "strict.yaml").write_text(yaml.safe_dump(strict))
    bad = sh([sys.executable, "-m", "evalgate", "check", "--params", "strict.yaml"], d, check=False)
    assert bad.returncode == 1
    assert sorted(line.split(":")[0] for line in bad.stdout.splitlines() if line.startswith("FAIL ")) == [
        "FAIL int2", "FAIL unsupported"]
    (d / "strict.yaml").unlink()
    promoted = sh([sys.executable, "-m", "evalgate", "check", "--promote"], d)
    assert "promoted: evalgate@champion" in promoted.stdout
    assert client.get_model_version_by_alias("evalgate", "champion").tags["variant"] == gate["best"]


def test_noop_repro_runs_and_logs_nothing(proj):
    d, _ = proj
    before = len(mlflow_runs(d))
    out = sh(["dvc", "repro"], d).stdout
    assert "Running stage" not in out
    sh(["dvc", "repro", "-s", "-f", "report"], d)    # the report stage alone, forced: same sweep id, nothing logged
    assert len(mlflow_runs(d)) == before


def test_bad_variant_is_one_line_before_loading(proj):
    d, _ = proj
    p = sh([sys.executable, "-m", "evalgate", "run", "nope", "--out", "/tmp/x"], d, check=False)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "variants.nope" in p.stderr


def test_one_variant_change_reruns_only_it(proj):
    d, _ = proj
    params = yaml.safe_load((d / "params.yaml").read_text())
    params["variants"]["prompt_lookup"]["speculative"]["num_tokens"] = 2
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh(["dvc", "repro"], d).stdout
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"quantize@prompt_lookup", "run@prompt_lookup", "gate", "report"}


def test_dvc_exp_run_composes_conf_through_hydra(proj):
    d, _ = proj
    sh(["git", "add", "-A"], d)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline"], d)  # exp run needs HEAD
    overrides = [x for o in [*TINY, "variants.prompt_lookup.speculative.num_tokens=3"] for x in ("-S", o)]
    out = sh(["dvc", "exp", "run", *overrides], d).stdout
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"quantize@prompt_lookup", "run@prompt_lookup", "gate", "report"}
    assert yaml.safe_load((d / "params.yaml").read_text())["variants"]["prompt_lookup"]["speculative"]["num_tokens"] == 3


def test_scheduled_repro_runs_only_what_dvc_finds_stale_and_commits_it(proj):
    """evalgate repro: DVC decides what is stale, it runs (one at a time on hf, each in its own supervised
    worker, as its stage would), `dvc commit` records it, and DVC then sees everything up to date."""
    d, _ = proj
    params = yaml.safe_load((d / "params.yaml").read_text())
    params["variants"]["prompt_lookup"]["speculative"]["num_tokens"] = 5
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh([sys.executable, "-m", "evalgate", "repro"], d).stdout
    assert "stale: run@prompt_lookup [+" in out and "running 1 variant(s) one at a time [+" in out
    assert "1/5 quantize@prompt_lookup (in this process, before the servers start) [+" in out   # its params changed
    assert json.loads((d / "results/prompt_lookup/timeline.json").read_text())["events"]
    status = sh([sys.executable, "-m", "dvc", "status"], d).stdout
    assert "up to date" in status, status
    again = sh([sys.executable, "-m", "evalgate", "repro"], d).stdout
    assert "stale: none" in again and "Running stage" not in again


def test_gate_and_report_in_process_then_one_commit_is_what_dvc_would_record(proj):
    """The scheduled path runs the gate and report stages' commands in its own process and records them
    with one DVC commit (evalgate.repro.gate_and_report, commit): DVC then finds both up to date, and the files are
    the ones their stages write (the verdicts, the summary naming the new ranking metric)."""
    d, _ = proj
    params = yaml.safe_load((d / "params.yaml").read_text())
    params["report"]["rank_by"] = "request_throughput"
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stale = sh([sys.executable, "-m", "dvc", "status", "gate", "report"], d).stdout
    assert "gate" in stale and "report" in stale
    sh([sys.executable, "-c", "import sys; from evalgate.repro import gate_and_report; sys.exit(gate_and_report())"], d)
    sh([sys.executable, "-c", "from evalgate.repro import commit; commit(['gate', 'report'])"], d)
    status = sh([sys.executable, "-m", "dvc", "status"], d).stdout
    assert "up to date" in status, status
    ours = (d / "dvc.lock").read_text()      # the one-pass commit writes what `dvc commit -f` writes
    sh([sys.executable, "-m", "dvc", "commit", "-f", "gate", "report"], d)
    assert (d / "dvc.lock").read_text() == ours
    bad = sh([sys.executable, "-c", "from evalgate.repro import commit; commit(['gate', 'run@nope'])"], d, check=False)
    assert bad.returncode and bad.stderr.strip().splitlines()[-1] == "dvc commit: no stage named run@nope in dvc.yaml"
    assert (d / "dvc.lock").read_text() == ours    # nothing committed
    assert "(by `request_throughput`)" in (d / "reports/summary.md").read_text()
    assert json.loads((d / "reports/gate.json").read_text())["variants"]["baseline"]["verdict"] == "accept"
