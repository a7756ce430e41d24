"""Workloads: every kind builds the same requests for every variant; a user's file loads, and a
malformed one is a one-line error before any model loads."""
import json
import os
import subprocess
import sys
from itertools import islice
from pathlib import Path

import pytest
import yaml

from evalgate.config import ConfigError
from evalgate.toymodel.corpus import Corpus
from evalgate.toymodel.tasks import write_tasks
from evalgate.toymodel.tokenizer import train_tokenizer
from evalgate.workload import build, read_user_file

ROOT = Path(__file__).resolve().parents[1]
HELD = {"add": 30, "copy": 10, "recall": 10, "sentence": 10, "count": 10}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from lm_eval.tasks import TaskManager

    d = tmp_path_factory.mktemp("wl")
    c = Corpus(0, HELD, add_digits=[1, 3, 1], copy_words=[3, 6], recall_pairs=[2, 4], count_len=[3, 8])
    tok = train_tokenizer(c.tokenizer_text(2000), 300)
    cwd = os.getcwd()
    os.chdir(d)
    try:
        write_tasks(c.heldout, d / "tasks", tok)
        tm = TaskManager(include_path=str(d / "tasks"), include_defaults=False)
        yield d, tok, tm, c
    finally:
        os.chdir(cwd)


def test_tasks_workload_carries_stops_caps_and_a_fixed_order(toy):
    d, tok, tm, _ = toy
    wl = {"source": "tasks", "tasks": ["fx_add", "fx_count"], "max_tokens": 64}
    reqs = build(wl, {"requests": {"max": 20}}, tm, tok, seed=0)
    assert len(reqs) == 20 and [r["index"] for r in reqs] == list(range(20))
    assert {r["source"] for r in reqs[:2]} == {"fx_add", "fx_count"}     # round-robin: every prefix has the mix
    assert all(r["stop"] == ["\n"] and r["max_tokens"] == 64 for r in reqs)
    assert reqs == build(wl, {"requests": {"max": 20}}, tm, tok, seed=0)  # the same for every variant
    assert reqs != build(wl, {"requests": {"max": 20}}, tm, tok, seed=1)


def test_shared_prefix_and_random_workloads(toy):
    d, tok, tm, _ = toy
    pre = build({"source": "tasks", "tasks": ["fx_add"], "prefix_tokens": 40}, {"requests": {"max": 6}}, tm, tok, 0)
    prefix = os.path.commonprefix([r["prompt"] for r in pre])
    assert 30 <= len(tok(prefix).input_ids) <= 41 and all(r["source"] == "fx_add+prefix" for r in pre)
    rnd = build({"source": "random", "input_len": 16, "output_len": 8}, {"requests": {"max": 5}}, tm, tok, 0)
    assert all(8 <= len(tok(r["prompt"]).input_ids) <= 24 and r["max_tokens"] == 8 and r["stop"] == [] for r in rnd)


def test_user_jsonl_and_sharegpt(tmp_path):
    f = tmp_path / "w.jsonl"
    f.write_text('{"prompt": "hi", "max_tokens": 5, "stop": "\\n"}\n\n{"prompt": "yo"}\n')
    rows = read_user_file(f, "auto", 99)
    assert rows == [{"source": "file", "prompt": "hi", "max_tokens": 5, "stop": ["\n"]},
                    {"source": "file", "prompt": "yo", "max_tokens": 99, "stop": []}]
    g = tmp_path / "s.json"
    g.write_text(json.dumps([{"conversations": [{"from": "human", "value": "q?"}, {"from": "gpt", "value": "a b c"}]}]))
    assert read_user_file(g)[0] == {"source": "sharegpt", "prompt": "q?", "max_tokens": 6, "stop": []}
    assert (ROOT / "docs/examples/workload.jsonl").exists() and read_user_file(ROOT / "docs/examples/workload.jsonl")


@pytest.mark.parametrize("text, msg", [
    ('{"prompt": "a"}\nnot json\n', r"w\.jsonl:2: not valid JSON"),
    ('{"text": "a"}\n', r"w\.jsonl:1: needs a non-empty string 'prompt'"),
    ('{"prompt": "a", "max_tokens": 0}\n', r"w\.jsonl:1: 'max_tokens' must be an integer ≥ 1"),
    ('{"prompt": "a", "stop": [1]}\n', r"w\.jsonl:1: 'stop' must be a string or a list of strings"),
    ('[{"conversations": 3}]', r"conversation 0: expected"),
])
def test_malformed_user_file_is_one_line(tmp_path, text, msg):
    f = tmp_path / "w.jsonl"
    f.write_text(text)
    with pytest.raises(ConfigError, match=msg) as e:
        read_user_file(f)
    assert "\n" not in str(e.value)


def test_malformed_file_fails_the_stage_before_any_model_loads(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    params["workload"] = {"name": "file", "source": "file", "path": str(tmp_path / "bad.jsonl"), "max_tokens": 8}
    params["model"]["id"] = str(tmp_path / "no-model-here")      # would fail later, if anything loaded
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    p = subprocess.run([sys.executable, "-m", "evalgate", "workload", "--params", str(tmp_path / "params.yaml"),
                        "--out", str(tmp_path / "w.jsonl"), "--reference", str(tmp_path / "r.jsonl")],
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0, p.stderr[-800:]
    assert "bad.jsonl:1: not valid JSON" in p.stderr


def test_count_items_are_long_answers_and_the_needle_is_far_back():
    c = Corpus(0, {"add": 1, "copy": 1, "recall": 1, "sentence": 1, "count": 5, "needle": 5}, add_digits=[1, 3, 1],
               copy_words=[3, 6], recall_pairs=[2, 4], count_len=[20, 40], needle_sentences=[50, 60])
    for it in c.heldout["count"]:
        nums = [int(x) for x in it.answer.split()]
        assert 20 <= len(nums) <= 40 and nums == list(range(nums[0], nums[0] + len(nums)))
        assert it.prompt == f"count {nums[0]} {nums[-1]}="
    for it in c.heldout["needle"]:
        key = it.prompt.split()[1]
        key = key.split("=")[0]
        assert it.prompt.startswith(f"fact {key}={it.answer} .") and it.prompt.endswith(f"? {key}=")
        assert it.prompt.count(" . ") >= 50
    ctx = Corpus(0, HELD, add_digits=[1, 3, 1], copy_words=[3, 6], recall_pairs=[2, 4], context_prob=1.0)
    items = list(islice(ctx.stream({"add": 1, "copy": 0, "recall": 0, "sentence": 0, "count": 0, "needle": 0}, "t"), 20))
    assert all(" . " in it.prompt or it.prompt.endswith(" .") or "." in it.prompt for it in items)
