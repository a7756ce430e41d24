"""`evalgate check`: every branch of the exit-code policy (gate.check), its config errors, and the
command itself (exit code, one line per failing variant, the GitHub job summary)."""
import json
import shutil
from pathlib import Path

import pytest
import yaml

from evalgate.check import Deployed, evaluate, parse_policy, summary_markdown
from evalgate.cli import main
from evalgate.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def gate(best="int8", **verdicts):
    v = {"baseline": ("accept", "reference"), "int8": ("accept", "all checks passed"),
         "int4": ("reject", "lmeval/fx_copy/exact_match/none: Δ=+0.015 inconclusive"),
         "prompt_lookup": ("accept", "all checks passed")}
    v.update(verdicts)
    return {"baseline": "baseline", "best": best,
            "variants": {n: {"verdict": a, "reason": r, "checks": []} for n, (a, r) in v.items()}}


def policy(**kw):
    return parse_policy({"check": kw})


def test_any_rejected_names_each_rejected_variant_once():
    out = evaluate(policy(fail_on="any_rejected"), gate(kv_int2=("reject", "stopped early")))
    assert not out.ok
    assert out.failures == ["int4: rejected, rejected: lmeval/fx_copy/exact_match/none: Δ=+0.015 inconclusive",
                            "kv_int2: rejected, rejected: stopped early"]
    assert evaluate(policy(fail_on="any_rejected"), gate(int4=("accept", "ok"))).ok


def test_required_rejected_and_required_missing_fail_other_rejections_do_not():
    p = policy(fail_on="required_rejected", required=["int8", "int4", "fp8"])
    out = evaluate(p, gate())
    assert out.failures == ["fp8: required, but not in this run's variants",
                            "int4: required, rejected: lmeval/fx_copy/exact_match/none: Δ=+0.015 inconclusive"]
    assert "int8: required and accepted" in out.notes
    assert evaluate(policy(fail_on="required_rejected", required=["int8"]), gate()).ok   # int4 is not required


def test_a_required_variant_also_caught_by_any_rejected_is_one_line():
    out = evaluate(policy(fail_on=["any_rejected", "required_rejected"], required=["int4"]), gate())
    assert out.failures == ["int4: required and rejected, rejected: lmeval/fx_copy/exact_match/none: Δ=+0.015 inconclusive"]


@pytest.mark.parametrize("best, ok", [("int8", True), ("baseline", False), (None, False)])
def test_no_winner(best, ok):
    out = evaluate(policy(fail_on="no_winner"), gate(best=best))
    assert out.ok is ok
    if not ok:
        assert out.failures[0].startswith("(no winner): ")


def test_no_winner_when_the_best_is_within_the_noise_of_the_baseline():
    g = gate(best="int8")
    g["best_within_noise"] = ["baseline"]
    out = evaluate(policy(fail_on="no_winner"), g)
    assert out.failures == ["(no winner): int8 is best on output_throughput, but not beyond this run's noise from the baseline"]
    g["best_within_noise"] = ["int4"]          # tied with another variant, beyond the baseline's noise: a winner
    assert evaluate(policy(fail_on="no_winner"), g).ok


def test_deployed_regressed_rejected_missing_accepted_and_none():
    p = policy(fail_on="deployed_regressed")
    rejected = evaluate(p, gate(), Deployed("int4", "registry evalgate@champion, version 3"))
    assert rejected.failures == ["int4: deployed (registry evalgate@champion, version 3) and now rejected: "
                                 "lmeval/fx_copy/exact_match/none: Δ=+0.015 inconclusive"]
    missing = evaluate(p, gate(), Deployed("fp8", "gate.check.deployed"))
    assert missing.failures == ["fp8: deployed (gate.check.deployed), but not in this run's variants: it was not re-checked"]
    assert evaluate(p, gate(), Deployed("int8", "x")).ok
    assert evaluate(p, gate(), None).ok       # nothing deployed yet: the first run passes this branch


def test_deployed_slowdown_is_direction_aware():
    metrics = {"int8": {"output_throughput": 70.0, "median_ttft_ms": 13.0}}
    slower = evaluate(policy(fail_on="deployed_regressed", max_slowdown_pct=25), gate(),
                      Deployed("int8", "x", metric=100.0), metrics)
    assert slower.failures == ["int8: deployed (x), output_throughput 70 vs 100 recorded (30.0% worse > 25%)"]
    assert evaluate(policy(fail_on="deployed_regressed", max_slowdown_pct=35), gate(),
                    Deployed("int8", "x", metric=100.0), metrics).ok
    # latency: lower is better, 13 ms against 10 ms recorded is 30 % worse
    lat = evaluate(policy(fail_on="deployed_regressed", max_slowdown_pct=25), gate(),
                   Deployed("int8", "x", metric=10.0), metrics, rank_by="median_ttft_ms")
    assert not lat.ok and "30.0% worse" in lat.failures[0]
    # without a bound, speed is not compared
    assert evaluate(policy(fail_on="deployed_regressed"), gate(), Deployed("int8", "x", metric=1000.0), metrics).ok


@pytest.mark.parametrize("verdicts", [{"baseline": ("reject", "p99_ttft_ms = 900 (limit max 200)")}, {}])
def test_a_rejected_or_missing_baseline_always_fails(verdicts):
    g = gate(**verdicts)
    if not verdicts:
        del g["variants"]["baseline"]
    out = evaluate(policy(fail_on=[], required=[]), g)
    assert not out.ok and out.failures[0].startswith("baseline: the baseline ")


def test_conditions_not_listed_are_not_checked():
    assert evaluate(policy(fail_on=[]), gate(best=None), Deployed("int4", "x")).ok


@pytest.mark.parametrize("bad, key", [({"fail_on": "sometimes"}, "gate.check.fail_on"),
                                      ({"required": "int8"}, "gate.check.required"),
                                      ({"deployed": 3}, "gate.check.deployed"),
                                      ({"max_slowdown_pct": -1}, "gate.check.max_slowdown_pct"),
                                      ({"fail_onn": []}, "gate.check.fail_onn")])
def test_policy_errors_name_their_key(bad, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_policy({"check": bad})


def test_default_policy_is_the_declared_one():
    declared = yaml.safe_load((ROOT / "conf/gate/default.yaml").read_text())["check"]
    p = parse_policy({"check": declared})
    assert p.fail_on == ("required_rejected", "deployed_regressed") and p.deployed == "registry"
    composed = yaml.safe_load((ROOT / "params.yaml").read_text())["gate"]["check"]
    assert composed == declared


def test_summary_markdown():
    md = summary_markdown(evaluate(policy(fail_on="any_rejected"), gate()))
    assert md.startswith("## evalgate check: ❌ fail (1)\n") and "- ❌ int4: rejected" in md


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A folder with the repo's params (the check's policy set per test), a gate.json, an empty MLflow store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["mlflow"]["tracking_uri"] = f"sqlite:///{tmp_path}/mlflow.db"

    def write(check: dict, g: dict):
        raw["gate"]["check"] = check
        Path("params.yaml").write_text(yaml.safe_dump(raw))
        Path("reports").mkdir(exist_ok=True)
        Path("reports/gate.json").write_text(json.dumps(g))

    return write


def test_the_command_exits_1_with_one_line_per_failing_variant(project, capsys, monkeypatch, tmp_path):
    project({"fail_on": ["any_rejected", "no_winner"]}, gate(best="baseline", kv_int2=("reject", "stopped early")))
    summary = tmp_path / "step_summary.md"
    summary.write_text("# the report\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    with pytest.raises(SystemExit) as e:
        main(["check"])
    assert e.value.code == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "evalgate check: FAIL (3)"
    assert [x.split(":")[0] for x in lines[1:4]] == ["FAIL int4", "FAIL kv_int2", "FAIL (no winner)"]
    assert summary.read_text().startswith("# the report\n## evalgate check: ❌ fail (3)")


def test_the_command_exits_0_on_a_pass_and_an_empty_registry(project, capsys):
    project({"fail_on": ["required_rejected", "deployed_regressed"], "required": ["int8"]}, gate())
    with pytest.raises(SystemExit) as e:
        main(["check"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("evalgate check: PASS") and "(deployed): none recorded" in out


def test_an_unreadable_registry_fails_the_check(project, capsys, tmp_path):
    project({"fail_on": ["deployed_regressed"]}, gate())
    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["mlflow"]["tracking_uri"] = "http://127.0.0.1:9"   # nothing listens on the discard port
    Path("params.yaml").write_text(yaml.safe_dump(raw))
    import os

    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    try:
        with pytest.raises(SystemExit) as e:
            main(["check"])
    finally:
        del os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    assert e.value.code == 1
    assert "FAIL (deployed): the MLflow registry could not be read" in capsys.readouterr().out


def test_a_bad_policy_is_exit_2_before_anything(project, capsys):
    project({"fail_on": "always"}, gate())
    with pytest.raises(SystemExit) as e:
        main(["check"])
    assert e.value.code == 2
    assert "gate.check.fail_on" in capsys.readouterr().err


def test_no_gate_result_is_exit_2(project, capsys):
    project({}, gate())
    shutil.rmtree("reports")
    with pytest.raises(SystemExit) as e:
        main(["check"])
    assert e.value.code == 2 and "reports/gate.json: not found" in capsys.readouterr().err
