"""Bad input to a stage: one line naming the key, exit code 2, before any model loads."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from evalgate.config import ConfigError, ModelSpec
from evalgate.models import resolve_model

ROOT = Path(__file__).resolve().parents[1]


def test_offline_hub_model_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"model\.id: cannot fetch 'no-such-org/no-such-model' from the Hugging Face hub"):
        resolve_model(ModelSpec(source="hub", id="no-such-org/no-such-model"))


def run_stage(tmp_path, mutate):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    mutate(params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "w.jsonl").write_text("")
    return subprocess.run([sys.executable, "-m", "evalgate", "run", "baseline", "--params",
                           str(tmp_path / "params.yaml"), "--workload", str(tmp_path / "w.jsonl"), "--reference",
                           str(tmp_path / "w.jsonl"), "--out", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True)


def test_missing_model_path(tmp_path):
    p = run_stage(tmp_path, lambda d: d["model"].update(id=str(tmp_path / "nope")))
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0
    assert "model.id" in p.stderr and "does not exist" in p.stderr
    assert not (tmp_path / "out").exists()


def test_unknown_task(tmp_path, tiny):
    def mutate(d):
        d["model"].update(id=tiny.id)
        d["eval"].update(tasks=["fx_add", "no_such_task"], include_path=str(tmp_path))
        d["gate"]["quality"] = {"fx_add/exact_match": {"max_loss_abs": 0.02}}
    p = run_stage(tmp_path, mutate)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "eval.tasks" in p.stderr, p.stderr[-500:]
