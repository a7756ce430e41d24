"""The MLflow model registry on a throwaway store: the report registers the best accepted variant (a
version linked to its run, tagged with verdict, config and metrics, its source the served
configuration), never a rejected one, once per gate result; `evalgate check --promote` moves the alias
only on a pass, and the next check compares with the variant holding it."""
import json
import shlex
from pathlib import Path

import mlflow
import pytest
import yaml

from evalgate import registry, tracking
from evalgate.check import parse_policy, run_check
from evalgate.config import parse
from evalgate.results import Results

ROOT = Path(__file__).resolve().parents[1]


def config(tmp_path, engine=None, variants=None):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["mlflow"] = {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "t", "system_metrics": False,
                     "registered_model": "m", "alias": "champion"}
    if engine:
        raw["engine"] = engine
    if variants is not None:
        raw["variants"] = variants
    return parse(raw)


def gate(best, verdicts):
    return {"baseline": "baseline", "best": best,
            "variants": {n: {"verdict": v, "reason": "all checks passed" if v == "accept" else "too lossy", "checks": []}
                         for n, v in verdicts.items()}}


def pipeline(cfg, tmp_path, g, tput):
    """What the run and report stages log: one live run per variant, the parent closed, the winner registered."""
    results = Results(tmp_path / "results")
    label = "m · hf"
    for name in g["variants"]:
        d = results.variant(name)
        d.reset()
        d.write_metrics({"output_throughput": tput[name], "median_ttft_ms": 5.0, "lmeval/fx_add/exact_match/none": 1.0,
                         "c1/output_throughput": 1.0})
        d.succeed()
        run = tracking.VariantRun.open(cfg.mlflow, cfg.raw, name, cfg.variant(name).as_params(), label)
        run.close(True, d.metrics())
    names = list(g["variants"])
    parent = tracking.log_report(cfg.mlflow, cfg.raw, label, names, {n: cfg.variant(n).as_params() for n in names},
                                 results, g, [{"variant": n} for n in names], [])
    return results, registry.register_best(cfg, g, results, parent, tmp_path / "checkpoints")


def test_the_best_accepted_variant_is_registered_with_its_run_and_tags(tmp_path):
    cfg = config(tmp_path)
    g = gate("int8", {"baseline": "accept", "int8": "accept", "int4": "reject"})
    results, version = pipeline(cfg, tmp_path, g, {"baseline": 100.0, "int8": 120.0, "int4": 150.0})
    client = mlflow.MlflowClient(cfg.mlflow["tracking_uri"])
    mv = client.get_model_version("m", version)
    run = client.get_run(mv.run_id)
    assert run.data.tags["variant"] == "int8" and run.data.tags["verdict"] == "accept"
    assert mv.source == f"{run.info.artifact_uri}/served"
    t = mv.tags
    assert (t["variant"], t["verdict"], t["metric.output_throughput"]) == ("int8", "accept", "120")
    assert t["metric.lmeval/fx_add/exact_match/none"] == "1" and "metric.c1/output_throughput" not in t
    assert json.loads(t["config"])["quantization"] == cfg.variant("int8").quantization["method"]
    served = json.loads(Path(mlflow.artifacts.download_artifacts(f"{mv.source}/serve.json")).read_text())
    assert served["variant"] == "int8" and served["engine"]["name"] == "hf" and served["checkpoint"] is None
    assert served["model"]["id"] == str(Path(cfg.model.id).resolve()) and served["model"]["base"] == cfg.model.id
    # the same gate result again (a forced report): no second version
    assert registry.register_best(cfg, g, results, None, tmp_path / "checkpoints") is None  # no parent: nothing
    assert pipeline(cfg, tmp_path, g, {"baseline": 100.0, "int8": 120.0, "int4": 150.0})[1] == version
    assert len(client.search_model_versions("name = 'm'")) == 1


def test_nothing_is_registered_without_an_accepted_best(tmp_path, capsys):
    cfg = config(tmp_path)
    g = gate(None, {"baseline": "reject", "int8": "reject"})
    _, version = pipeline(cfg, tmp_path, g, {"baseline": 1.0, "int8": 2.0})
    assert version is None and "nothing registered" in capsys.readouterr().out
    g = gate("int4", {"baseline": "accept", "int4": "reject"})   # a gate.json that names a rejected best
    assert registry.register_best(cfg, g, Results(tmp_path / "results"), "x", tmp_path) is None


def test_promote_moves_the_alias_on_a_pass_only_and_check_compares_with_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = config(tmp_path)
    cfg.gate["check"] = {"fail_on": ["deployed_regressed", "required_rejected"], "required": ["int8"],
                         "max_slowdown_pct": 20}
    parse_policy(cfg.gate)
    client = mlflow.MlflowClient(cfg.mlflow["tracking_uri"])
    # run 1: int8 wins and passes: promoted
    g1 = gate("int8", {"baseline": "accept", "int8": "accept", "int4": "reject"})
    pipeline(cfg, tmp_path, g1, {"baseline": 100.0, "int8": 120.0, "int4": 150.0})
    (tmp_path / "gate.json").write_text(json.dumps(g1))
    assert run_check(cfg, tmp_path / "gate.json", tmp_path / "results", promote=True) == 0
    champion = client.get_model_version_by_alias("m", "champion")
    assert champion.tags["variant"] == "int8"
    assert registry.deployed(cfg.mlflow, "output_throughput").metric == 120.0
    # run 2 (a pull request): int8 rejected now; batch4 would win, yet the check fails and the alias stays
    g2 = gate("batch4", {"baseline": "accept", "int8": "reject", "batch4": "accept"})
    pipeline(cfg, tmp_path, g2, {"baseline": 100.0, "int8": 120.0, "batch4": 300.0})
    (tmp_path / "gate.json").write_text(json.dumps(g2))
    capsys.readouterr()
    assert run_check(cfg, tmp_path / "gate.json", tmp_path / "results", promote=True) == 1
    out = capsys.readouterr().out
    assert f"FAIL int8: deployed (registry m@champion, version {champion.version}) and now rejected" in out
    assert "FAIL int8: required, rejected" in out
    assert client.get_model_version_by_alias("m", "champion").version == champion.version
    assert len(client.search_model_versions("name = 'm'")) == 2      # batch4 registered, not promoted
    # run 3: int8 accepted but 25 % slower than recorded (> 20 %): fails too
    g3 = gate("int8", {"baseline": "accept", "int8": "accept"})
    pipeline(cfg, tmp_path, g3, {"baseline": 100.0, "int8": 90.0})
    (tmp_path / "gate.json").write_text(json.dumps(g3))
    assert run_check(cfg, tmp_path / "gate.json", tmp_path / "results", promote=True) == 1
    assert "25.0% worse > 20%" in capsys.readouterr().out
    assert client.get_model_version_by_alias("m", "champion").version == champion.version


def test_the_vllm_served_configuration_starts_vllm_serve_from_the_artifact(tmp_path):
    cfg = config(tmp_path, engine={"name": "vllm", "seed": 0, "max_model_len": 4096, "gpu_memory_utilization": 0.5,
                                   "engine_args": {"max_num_seqs": 256}},
                 variants={"w4a16": {"quantization": {"method": "w4a16"}},
                           "prompt_lookup": {"speculative": {"method": "ngram", "num_tokens": 4}}})
    ckpt = tmp_path / "checkpoints" / "w4a16"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text('{"quantization_config": {"format": "pack-quantized"}}')
    (ckpt / "model.safetensors").write_bytes(b"weights")
    g = gate("w4a16", {"baseline": "accept", "w4a16": "accept", "prompt_lookup": "accept"})
    _, version = pipeline(cfg, tmp_path, g, {"baseline": 100.0, "w4a16": 130.0, "prompt_lookup": 110.0})
    client = mlflow.MlflowClient(cfg.mlflow["tracking_uri"])
    assert client.get_model_version("m", version).source.endswith("/served")
    client.set_registered_model_alias("m", "champion", version)
    # README: `mlflow artifacts download -u models:/evalgate@champion -d served && bash served/serve.sh`
    mlflow.set_tracking_uri(cfg.mlflow["tracking_uri"])
    local = Path(mlflow.artifacts.download_artifacts("models:/m@champion", dst_path=str(tmp_path / "served")))
    assert local == tmp_path / "served"
    assert (local / "checkpoint" / "model.safetensors").read_bytes() == b"weights"
    served = json.loads((local / "serve.json").read_text())
    assert served["checkpoint"] == "checkpoint" and served["model"]["base"] == cfg.model.id
    lines = (local / "serve.sh").read_text().splitlines()
    assert lines[2] == 'cd "$(dirname "$0")"'
    cmd = shlex.split(lines[3])
    assert cmd[:4] == ["exec", "vllm", "serve", "checkpoint"]     # the quantized checkpoint, next to the script
    assert cmd[4:-1] == served["vllm_serve_args"][1:]
    assert "--max-model-len" in cmd and "4096" in cmd and "--max-num-seqs" in cmd
    # a variant without a checkpoint serves the model reference with its own flags
    served2 = registry.served_files(cfg, "prompt_lookup", tmp_path / "checkpoints" / "prompt_lookup", tmp_path / "pl")
    # (a local model by its absolute path: serve.sh runs from its own folder)
    assert served2["vllm_serve_args"][0] == str(Path(cfg.model.id).resolve())
    assert Path(served2["vllm_serve_args"][0]).is_absolute() and "--speculative-config" in served2["vllm_serve_args"]
    assert not (tmp_path / "pl" / "checkpoint").exists()


@pytest.fixture(autouse=True)
def _no_env_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
