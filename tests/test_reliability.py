"""Issue 12's failures, each reproduced as the issue found it and asserted fixed: several include paths, the
README's `dvc exp run -S gate.quality…` example (for real, through DVC's own Hydra composition), Hydra's
whole error on one line, an unknown gated metric refused before any variant runs, a corrupted results file
rejecting only its variant, an unreachable MLflow server failing fast (its password never shown) while the
verdicts stay, the margin at a baseline of 0, rank_by's direction, params.yaml put back after a failed
experiment."""

import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from evalgate import gate as gate_mod
from evalgate.compose import compose
from evalgate.config import ConfigError, Threshold, parse
from evalgate.gate import decide

ROOT = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((ROOT / "params.yaml").read_text())


def write_task(folder: Path, name: str, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / f"{name}.yaml").write_text(yaml.safe_dump({
        "task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test", "output_type": "generate_until", "doc_to_text": "{{q}}", "doc_to_target": "{{a}}",
        "generation_kwargs": {"until": ["\n"], "max_gen_toks": 8},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}]}))


# -- 1. several include paths ------------------------------------------------------------------------------
def test_several_include_paths_one_task_from_each(tmp_path):
    from evalgate.evaluate import task_manager

    write_task(tmp_path / "mine", "my_add", [{"q": "1+1=", "a": "2"}])
    write_task(tmp_path / "theirs", "their_add", [{"q": "2+2=", "a": "4"}])
    p = copy.deepcopy(BASE)
    p["eval"]["include_path"] = [str(tmp_path / "mine"), str(tmp_path / "theirs")]
    cfg = parse(p)
    assert cfg.eval["include_path"] == [str(tmp_path / "mine"), str(tmp_path / "theirs")]
    assert parse({**p, "eval": {**p["eval"], "include_path": str(tmp_path / "mine")}}).eval["include_path"] == [
        str(tmp_path / "mine")]                                     # one folder is still a plain string
    tm = task_manager(["my_add", "their_add"], cfg.eval["include_path"])
    assert {"my_add", "their_add"} <= set(tm.all_tasks)
    with pytest.raises(ConfigError, match=r"eval.include_path: .*nowhere.* is not a folder"):
        task_manager(["my_add"], [str(tmp_path / "mine"), str(tmp_path / "nowhere")])


# -- 3. an unknown gated metric of a known task: refused by the workload stage, before any variant ---------
def test_unknown_gated_metric_is_refused_with_what_the_task_computes(tmp_path):
    from evalgate.evaluate import check_gated_metrics, task_manager

    write_task(tmp_path / "t", "my_add", [{"q": "1+1=", "a": "2"}])
    tm = task_manager(["my_add"], [str(tmp_path / "t")])
    check_gated_metrics(tm, ["my_add/exact_match", "fidelity/kl_mean"])          # known: passes
    with pytest.raises(ConfigError) as e:
        check_gated_metrics(tm, ["my_add/exact_matc"])
    assert str(e.value) == "gate.quality.my_add/exact_matc: task 'my_add' computes exact_match; not 'exact_matc'"
    with pytest.raises(ConfigError, match=r"has the filters none; not 'strict'"):
        check_gated_metrics(tm, ["my_add/exact_match/strict"])


def test_gated_metrics_that_passed_are_not_loaded_again_and_a_bad_one_is_refused_every_time(tmp_path, monkeypatch):
    """The scheduler prepares every variant with the same keys: the tasks are loaded to check them once per
    task index; a key that failed is refused again, not remembered as checked."""
    from evalgate.evaluate import check_gated_metrics, task_manager

    write_task(tmp_path / "t", "my_add", [{"q": "1+1=", "a": "2"}])
    tm = task_manager(["my_add"], [str(tmp_path / "t")])
    loads = []
    real = tm.load
    monkeypatch.setattr(tm, "load", lambda names: loads.append(names) or real(names))
    for _ in range(3):
        check_gated_metrics(tm, ["my_add/exact_match"])
    assert loads == [["my_add"]]
    for _ in range(2):
        with pytest.raises(ConfigError, match="not 'exact_matc'"):
            check_gated_metrics(tm, ["my_add/exact_matc"])
    assert len(loads) == 3


# -- 2. the README's dvc exp run example; Hydra's error on one line; params.yaml put back -------------------
def test_nested_override_reaches_a_gated_metric_and_slash_form_says_what_to_write():
    p = compose(["gate.quality.fx_add.exact_match.max_loss_abs=0.05"], ROOT / "conf")
    assert parse(p).gate["quality"]["fx_add/exact_match"]["max_loss_abs"] == 0.05
    with pytest.raises(ConfigError) as e:
        compose(["gate.quality.fx_add/exact_match.max_loss_abs=0.05"], ROOT / "conf")
    line = str(e.value)
    assert "\n" not in line and "mismatched input '/'" in line
    assert "write gate.quality.fx_add.exact_match.max_loss_abs=0.05" in line
    with pytest.raises(ConfigError) as e:
        compose(["variant=[no_such_variant]"], ROOT / "conf")
    assert "\n" not in str(e.value) and "no_such_variant" in str(e.value) and "conf/variant/ has: batch4" in str(e.value)


def sh(args, cwd, env=None, check=True):
    p = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env, timeout=300)
    if check and p.returncode:
        raise AssertionError(f"{args}: {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return p


def test_dvc_exp_run_readme_example_and_params_put_back_after_a_failed_experiment(tmp_path):
    """For real: DVC composes conf/ with the README's override; an experiment whose composition does
    not validate fails with the one line, and params.yaml is HEAD's again (the rejected one beside it)."""
    d = tmp_path / "proj"
    shutil.copytree(ROOT / "conf", d / "conf")
    shutil.copy(ROOT / "params.yaml", d / "params.yaml")
    (d / "dvc.yaml").write_text(
        "stages:\n  gate:\n    cmd: python -m evalgate gate --params params.yaml --results results --out gate.json\n"
        "    params:\n      - gate\n      - seed\n    outs:\n      - gate.json:\n          cache: false\n")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    dvc = [sys.executable, "-m", "dvc"]
    sh(["git", "init", "-q"], d)
    sh([*dvc, "init", "-q"], d, env)
    sh([*dvc, "config", "hydra.enabled", "True"], d, env)
    sh(["git", "add", "-A"], d)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base"], d)
    head = (d / "params.yaml").read_text()
    sh([*dvc, "exp", "run", "-S", "gate.quality.fx_add.exact_match.max_loss_abs=0.05"], d, env)   # README's form
    assert yaml.safe_load((d / "params.yaml").read_text())["gate"]["quality"]["fx_add"]["exact_match"]["max_loss_abs"] == 0.05
    assert json.loads((d / "gate.json").read_text())["variants"]["int8"]["verdict"] == "reject"  # no results: ran
    bad = sh([*dvc, "exp", "run", "-S", "seed=abc"], d, env, check=False)
    assert bad.returncode != 0
    errors = [x for x in (bad.stdout + bad.stderr).splitlines() if x.startswith("config error: ")]
    assert errors and errors[0].startswith("config error: seed: must be an integer, got 'abc'; params.yaml put back"), bad
    assert (d / "params.yaml").read_text() == head
    assert yaml.safe_load((d / "params.yaml.rejected").read_text())["seed"] == "abc"


# -- 4. a corrupted results file rejects its variant only ---------------------------------------------------
def gate_cfg():
    return parse({"model": {"source": "local", "id": "m"}, "engine": {"name": "hf"},
                  "workload": {"source": "tasks", "tasks": ["t"]}, "eval": {"tasks": ["t"]},
                  "gate": {"quality": {"t/acc": {"max_loss_abs": 0.1}}}, "baseline": {}, "variants": {"a": {}, "b": {}}})


def finished(folder: Path, acc: float, thr: float) -> None:
    folder.mkdir(parents=True)
    (folder / "status.json").write_text('{"ok": true}')
    (folder / "metrics.json").write_text(json.dumps({"lmeval/t/acc/none": acc, "output_throughput": thr}))


@pytest.mark.parametrize("corrupt", [
    ("metrics.json", '{"lmeval/t/acc/none": 0.9, "output_thr'),     # cut off mid-write
    ("status.json", "\x00\x00\x00"),                                 # zeros after a crash
    ("status.json", "[1, 2]"),                                       # valid JSON, not a status
    ("metrics.json", '"just a string"'),
    ("lm_eval.json", "{"),
])
def test_a_corrupted_results_file_rejects_only_that_variant(tmp_path, corrupt):
    from evalgate.results import Results

    for name, acc, thr in (("baseline", 0.9, 100), ("a", 0.9, 150), ("b", 0.9, 200)):
        finished(tmp_path / name, acc, thr)
    (tmp_path / "b" / corrupt[0]).write_text(corrupt[1])
    cfg = gate_cfg()
    g = decide(cfg, Results(tmp_path).load(cfg.variants))
    assert g["variants"]["a"]["verdict"] == "accept" and g["best"] == "a"
    b = g["variants"]["b"]
    assert b["verdict"] == "reject" and corrupt[0] in b["reason"] and "\n" not in b["reason"], b


def test_corrupted_samples_reject_only_that_variant(tmp_path):
    from evalgate.results import Results

    for name in ("baseline", "a", "b"):
        finished(tmp_path / name, 0.9, 100)
        (tmp_path / name / "samples_t.jsonl").write_text(
            "".join(json.dumps({"doc_id": i, "acc": 1, "filter": "none"}) + "\n" for i in range(200)))
    (tmp_path / "b" / "samples_t.jsonl").write_text('{"doc_id": 0, "acc": 1, "fil\n')
    cfg = gate_cfg()
    g = decide(cfg, Results(tmp_path).load(cfg.variants))
    assert g["variants"]["a"]["verdict"] == "accept"
    assert g["variants"]["b"]["verdict"] == "reject" and "samples_t.jsonl: unreadable" in g["variants"]["b"]["reason"]


# -- 5. MLflow unreachable: one line, fast, the password masked; the verdicts are files the gate wrote -------
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_tracking_server_fails_fast_and_verdicts_stay(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(BASE))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://alice:s3cret@127.0.0.1:{closed_port()}"}
    gate = tmp_path / "gate.json"
    p = subprocess.run([sys.executable, "-m", "evalgate", "gate", "--params", str(params), "--results",
                        str(tmp_path / "results"), "--out", str(gate)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0 and json.loads(gate.read_text())["variants"]   # the gate needs no MLflow
    before = gate.read_bytes()
    t0 = time.time()
    for cmd in (["report", "--gate", str(gate), "--out", str(tmp_path / "reports")], ["run", "int8"], ["repro"]):
        p = subprocess.run([sys.executable, "-m", "evalgate", *cmd, "--params", str(params)], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
        err = p.stderr.strip()
        assert p.returncode == 2 and err.count("\n") == 0, (cmd, err[-2000:])
        assert "MLFLOW_TRACKING_URI: http://alice:***@127.0.0.1:" in err and "unreachable" in err
        assert "s3cret" not in p.stdout + p.stderr
    assert time.time() - t0 < 60                                   # not MLflow's ≈ 4 minutes of retries
    assert gate.read_bytes() == before


def test_no_secret_in_mlflow_params():
    from evalgate.tracking import flat_params, redact

    flat = flat_params("", {"mlflow": {"tracking_uri": "https://bob:hunter2@mlflow.example/"},
                            "model": {"token": "hf_abcdefghijklmnopqrstuvwxyz012345", "id": "org/m"}})
    text = json.dumps(flat)
    assert "hunter2" not in text and "hf_abcdefghijklmnopqrstuvwxyz012345" not in text and "org/m" in text
    assert "hunter2" not in redact("connect to https://bob:hunter2@mlflow.example failed")


# -- 6. a baseline that scores 0 ------------------------------------------------------------------------------
def zero_cfg(limits):
    return parse({"model": {"source": "local", "id": "m"}, "engine": {"name": "hf"},
                  "workload": {"source": "tasks", "tasks": ["t"]}, "eval": {"tasks": ["t"]},
                  "gate": {"quality": {"t/acc": limits, "t/ppl": {"max_loss_rel_pct": 5}}},
                  "baseline": {}, "variants": {"same": {}, "worse": {}}})


def res(acc, ppl):
    return {"status": {"ok": True}, "metrics": {"lmeval/t/acc/none": acc, "lmeval/t/ppl/none": ppl},
            "higher_is_better": {"lmeval/t/acc": True, "lmeval/t/ppl": False}}


def test_margin_at_a_zero_baseline():
    assert gate_mod.margin(Threshold("t/acc", None, 5), 0.0) is None          # relative alone: no margin
    assert gate_mod.margin(Threshold("t/acc", 0.02, 5), 0.0) == 0.02         # the absolute one applies
    assert gate_mod.margin(Threshold("t/acc", 0.02, 5), 0.2) == pytest.approx(0.01)
    assert gate_mod.margin(Threshold("t/acc", None, 5), -0.4) == pytest.approx(0.02)   # |baseline|


def test_a_variant_as_good_as_a_zero_baseline_is_accepted_a_worse_one_rejected():
    """Before: δ = 5 % × 0 = 0, every variant rejected "inconclusive", even one with identical answers."""
    g = decide(zero_cfg({"max_loss_rel_pct": 5}), {"baseline": res(0.0, 0.0), "same": res(0.0, 0.0),
                                                   "worse": res(0.0, 0.3)})
    assert g["variants"]["same"]["verdict"] == "accept", g["variants"]["same"]
    worse = g["variants"]["worse"]
    assert worse["verdict"] == "reject" and "baseline 0" in worse["reason"] and "lmeval/t/ppl/none" in worse["reason"]
    g = decide(zero_cfg({"max_loss_abs": 0.02, "max_loss_rel_pct": 5}),
               {"baseline": res(0.0, 1.0), "same": res(0.0, 1.0), "worse": res(0.0, 1.0)})
    (acc,) = [c for c in g["variants"]["same"]["checks"] if c["metric"] == "lmeval/t/acc/none"]
    assert acc["margin"] == 0.02 and acc["passed"]


# -- 7. rank_by's direction comes from the metric ---------------------------------------------------------------
@pytest.mark.parametrize("rank_by, best", [("median_ttft_ms", "a"), ("output_throughput", "b"), ("mem_peak_mb", "a")])
def test_rank_by_direction_comes_from_the_metric(rank_by, best):
    p = {"model": {"source": "local", "id": "m"}, "engine": {"name": "hf"}, "workload": {"source": "tasks", "tasks": ["t"]},
         "eval": {"tasks": ["t"]}, "gate": {"quality": {"t/acc": {"max_loss_abs": 0.1}}}, "baseline": {},
         "variants": {"a": {}, "b": {}}, "report": {"rank_by": rank_by}}

    def r(ttft, thr, mem):
        return {"status": {"ok": True}, "metrics": {"lmeval/t/acc/none": 0.9, "median_ttft_ms": ttft,
                                                    "output_throughput": thr, "mem_peak_mb": mem},
                "higher_is_better": {"lmeval/t/acc": True}}

    g = decide(parse(p), {"baseline": r(30, 100, 500), "a": r(10, 120, 400), "b": r(50, 200, 600)})
    assert g["best"] == best


# -- 10. `.venv/bin/dvc repro` from a fresh shell: a stage's `python` that lacks the requirements hands over --------
@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="needs a system python without the requirements")
def test_a_python_without_the_requirements_hands_over_to_the_project_venv(tmp_path):
    bare = "/usr/bin/python3"
    if subprocess.run([bare, "-c", "import typer, transformers"], capture_output=True).returncode == 0:
        pytest.skip("the system python has the requirements")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "EVALGATE_HANDED_OVER")}
    env["PYTHONPATH"] = str(ROOT)   # the package's source, as DVC's working folder gives it
    p = subprocess.run([bare, "-m", "evalgate", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "run `make repro` once" in p.stderr, p.stderr
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))   # the project's venv: this test's own
    p = subprocess.run([bare, "-m", "evalgate", "--help"], cwd=tmp_path, env={**env, "DVC_ROOT": str(tmp_path)},
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "running the project's" in p.stderr and "compose" in p.stdout, (p.stdout, p.stderr)
