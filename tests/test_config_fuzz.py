"""Fuzzed configurations (issue 12): every bad params.yaml is one line naming the key, exit 2, before
anything heavy is imported; no good one is refused.

Each *kind* below breaks params.yaml in one way (a wrong type, a range, an unknown key or name, an empty
list, a duplicate, malformed YAML…); hypothesis draws the bad value, and the key the error line must name
is asserted. The good configurations are drawn too (values inside every declared range, subsets of the
real variant files), so a schema that refused too much would fail here as well.
"""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evalgate.compose import check_no_duplicates, check_yaml_files, compose
from evalgate.config import ConfigError, parse

ROOT = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((ROOT / "params.yaml").read_text())
VARIANT_FILES = sorted(p.stem for p in (ROOT / "conf/variant").glob("*.yaml"))

# values that are not of the declared type (strict mode: no `true` taken as 1, no "3" taken as 3)
fractional = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6).filter(lambda x: x != int(x))
not_int = st.one_of(st.booleans(), st.text(min_size=1, max_size=5), fractional, st.lists(st.integers(), max_size=2), st.none())
not_int_given = not_int.filter(lambda v: v is not None)  # for optional keys, where null means "not set"
not_number = st.one_of(st.booleans(), st.text(min_size=1, max_size=5), st.lists(st.integers(), max_size=2),
                       st.dictionaries(st.text(max_size=3), st.integers(), max_size=1))
not_bool = st.one_of(st.integers(), st.text(min_size=1, max_size=5), st.floats(allow_nan=False))
not_str = st.one_of(st.integers(), st.booleans(), st.lists(st.integers(), min_size=1, max_size=2), st.floats(allow_nan=False))
not_name = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=3, max_size=12)
negative = st.integers(max_value=-1)
not_positive = st.integers(max_value=0)


def set_in(p: dict, dotted: str, value) -> dict:
    *path, last = dotted.split(".")
    node = p
    for k in path:
        node = node.setdefault(k, {})
    node[last] = value
    return p


def pop_in(p: dict, dotted: str) -> dict:
    *path, last = dotted.split(".")
    node = p
    for k in path:
        node = node[k]
    node.pop(last)
    return p


def setter(key, strategy, named=None):
    """A kind: `key` set to a drawn bad value; the error line must name `named` (default the key)."""
    return (key, strategy, lambda p, v: set_in(p, key, v), named or key)


def _unknown_key(section):
    return (f"{section}.<unknown>", not_name.map(lambda s: "zz_" + s),
            lambda p, v: set_in(p, f"{section}.{v}", 1), section)


KINDS = [
    # wrong types
    setter("seed", not_int),
    setter("engine.eval_batch_size", not_int),
    setter("gate.quality.fx_add.exact_match.max_loss_abs", st.one_of(st.booleans(), st.text(min_size=1, max_size=4)),
           "gate.quality.fx_add/exact_match.max_loss_abs"),
    setter("gate.quality.fx_count.exact_match.max_loss_abs", st.booleans(), "gate.quality.fx_count/exact_match.max_loss_abs"),
    setter("load.aa", not_bool),
    setter("workload.max_tokens", not_int),
    setter("workload.ignore_eos", not_bool),
    setter("model.id", not_str),
    setter("eval.bootstrap_iters", not_int),
    setter("mlflow.enabled", not_bool),
    setter("faults.attempts", not_int),
    setter("faults.backoff_s", not_number),
    setter("load.concurrency", st.one_of(st.integers(), st.text(min_size=1, max_size=4)), "load.concurrency"),
    setter("eval.tasks", st.one_of(st.integers(), st.booleans()), "eval.tasks"),
    setter("fixture.target.hidden_size", not_int),
    setter("variants.int4.quantization.group_size", not_int_given),
    # ranges
    setter("engine.eval_batch_size", not_positive),
    setter("variants.int4.quantization.group_size", not_positive),
    setter("seed", negative),
    setter("gate.quality.fx_add.exact_match.max_loss_abs", st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False),
           "gate.quality.fx_add/exact_match.max_loss_abs"),
    setter("gate.quality.fx_add.exact_match.max_loss_rel_pct", st.floats(min_value=100.01, max_value=1e9),
           "gate.quality.fx_add/exact_match.max_loss_rel_pct"),
    setter("gate.statistics.alpha",
           st.one_of(st.floats(min_value=0.5, max_value=10), st.floats(max_value=0, allow_nan=False, allow_infinity=False))),
    setter("faults.attempts", st.one_of(st.integers(max_value=0), st.integers(min_value=11))),
    setter("workload.max_tokens", not_positive),
    setter("load.requests.min", not_positive),
    setter("engine.device", not_name.map(lambda s: "tpu" + s)),
    setter("load.concurrency",
           st.lists(st.integers(1, 64), min_size=2, max_size=4, unique=True).map(lambda xs: sorted(xs, reverse=True))),
    # unknown keys
    _unknown_key("engine"),
    _unknown_key("gate"),
    _unknown_key("load"),
    _unknown_key("variants.int8.quantization"),
    _unknown_key("faults"),
    # unknown names
    setter("engine.name", not_name.map(lambda s: "eng_" + s)),
    setter("variants.int8.quantization.method", not_name.map(lambda s: "q_" + s)),
    setter("variants.int8.kv_cache.dtype", not_name.map(lambda s: "kv_" + s)),
    setter("report.rank_by", not_name.map(lambda s: "speed_" + s)),
    setter("workload.source", not_name.map(lambda s: "src_" + s)),
    ("gate.quality.<unknown task>", not_name, lambda p, v: set_in(p, f"gate.quality.nope_{v}.acc", {"max_loss_abs": 0.1}),
     "gate.quality.nope_"),
    ("gate.limits.<unknown metric>", not_name, lambda p, v: set_in(p, f"gate.limits.m_{v}", {"max": 1}), "gate.limits"),
    ("variants.<bad name>", st.text(alphabet="/ .:", min_size=1, max_size=3),
     lambda p, v: set_in(p, "variants", {**p["variants"], f"x{v}y": {}}), "variants"),
    # empty lists, duplicates, missing
    setter("eval.tasks", st.just([])),
    setter("load.concurrency", st.just([])),
    setter("eval.tasks", st.sampled_from(["fx_add", "fx_copy"]).map(lambda t: [t, t])),
    setter("eval.include_path", st.just([])),
    ("baseline <missing>", st.just(None), lambda p, v: pop_in(p, "baseline"), "baseline"),
    ("model.id <missing>", st.just(None), lambda p, v: pop_in(p, "model.id"), "model.id"),
    # cross-field rules
    ("checkpoint without path", st.just(None),
     lambda p, v: set_in(p, "variants.int8.quantization.method", "checkpoint"), "variants.int8.quantization.path"),
    ("baseline named as a variant", st.just(None), lambda p, v: set_in(p, "variants.baseline", {}), "variants.baseline"),
    ("no margin", st.just(None), lambda p, v: set_in(p, "gate.quality.fx_add.exact_match", {"max_loss_abs": None}),
     "gate.quality.fx_add/exact_match"),
    ("load.requests max < min", st.integers(2, 100),
     lambda p, v: set_in(p, "load.requests", {"min": v, "max": v - 1}), "load.requests.max"),
]


def test_there_are_at_least_thirty_kinds():
    assert len(KINDS) >= 30


def one_line_error(params: dict) -> str:
    with pytest.raises(ConfigError) as e:
        parse(params)
    line = str(e.value)
    assert "\n" not in line and "Traceback" not in line
    return line


@pytest.mark.parametrize("key, strategy, mutate, named", KINDS, ids=[k[0] for k in KINDS])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_bad_config_is_one_line_naming_the_key(key, strategy, mutate, named, data):
    p = mutate(copy.deepcopy(BASE), data.draw(strategy))
    line = one_line_error(p)
    assert named in line, (key, line)


# -- good configurations: drawn inside every declared range, never refused ------------------------------------
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), abs_=st.one_of(st.none(), st.floats(0, 1)), rel=st.floats(0, 100),
       batch=st.integers(1, 512), conc=st.lists(st.integers(1, 256), min_size=1, max_size=5, unique=True),
       attempts=st.integers(1, 10), alpha=st.floats(1e-6, 0.499), group=st.sampled_from([16, 32, 64, 128]),
       rank=st.sampled_from(["output_throughput", "median_ttft_ms", "p99_e2el_ms", "request_goodput"]))
def test_no_good_config_is_refused(seed, abs_, rel, batch, conc, attempts, alpha, group, rank):
    p = copy.deepcopy(BASE)
    p["seed"] = seed
    p["gate"]["quality"]["fx_add"]["exact_match"] = {"max_loss_abs": abs_, "max_loss_rel_pct": rel}
    p["engine"]["eval_batch_size"] = batch
    p["load"]["concurrency"] = sorted(conc)
    p["faults"]["attempts"] = attempts
    p["gate"]["statistics"]["alpha"] = alpha
    p["variants"]["int4"]["quantization"]["group_size"] = group
    p["report"]["rank_by"] = rank
    cfg = parse(p)
    assert cfg.seed == seed and cfg.variants["int4"].quantization["group_size"] == group


@settings(max_examples=8, deadline=None)
@given(chosen=st.lists(st.sampled_from([v for v in VARIANT_FILES if v not in ("fp8", "w4a16", "w8a8")]),
                       min_size=1, max_size=4, unique=True))
def test_any_set_of_variant_files_composes(chosen):
    cfg = parse(compose([f"variant=[{','.join(chosen)}]", "combo=[]", "fixture=cpu_draft"], ROOT / "conf"))
    assert set(cfg.variants) == {"baseline", *chosen}


# -- what the schema cannot see: conf/ itself ------------------------------------------------------------------
@settings(max_examples=10, deadline=None)
@given(names=st.lists(st.sampled_from(VARIANT_FILES), min_size=1, max_size=3, unique=True), twice=st.data())
def test_a_variant_listed_twice_is_refused(names, twice):
    dup = twice.draw(st.sampled_from(names))
    with pytest.raises(ConfigError, match=rf"variant: .*lists '{dup}' twice") as e:
        check_no_duplicates([f"variant=[{','.join([*names, dup])}]"], ROOT / "conf")
    assert "\n" not in str(e.value)


MALFORMED = ["quantization: {method: int8", "quantization:\n  method: int8\n method: x", "a: [1, 2",
             "quantization:\n\tmethod: int8", "key: value\nkey: other", "- a\nb: c", "quantization: method: int8"]


@pytest.mark.parametrize("text", MALFORMED)
def test_malformed_variant_yaml_is_one_line_naming_file_and_line(tmp_path, text):
    conf = tmp_path / "conf"
    (conf / "variant").mkdir(parents=True)
    (conf / "variant" / "broken.yaml").write_text("# @package variants.broken\n" + text + "\n")
    with pytest.raises(ConfigError) as e:
        check_yaml_files(conf)
    line = str(e.value)
    assert "\n" not in line and "broken.yaml:" in line and "not valid YAML" in line, line


# -- through the command: exit 2, one line, nothing heavy imported ------------------------------------------------
CLI_CASES = {
    "seed=abc": lambda p: set_in(p, "seed", "abc"),
    "max_loss_abs=true": lambda p: set_in(p, "gate.quality.fx_add.exact_match.max_loss_abs", True),
    "eval_batch_size=0": lambda p: set_in(p, "engine.eval_batch_size", 0),
    "group_size=0": lambda p: set_in(p, "variants.int4.quantization.group_size", 0),
    "rank_by unknown": lambda p: set_in(p, "report.rank_by", "speed"),
    "checkpoint without path": lambda p: set_in(p, "variants.int8.quantization.method", "checkpoint"),
    "unknown gate metric name": lambda p: set_in(p, "gate.quality.fx_nope.acc", {"max_loss_abs": 0.1}),
}


def test_the_command_says_one_line_and_exits_2_before_anything_heavy_loads(tmp_path):
    """Every stage validates first: `evalgate gate` and `evalgate run` on each bad file exit 2 with one
    line on stderr and no traceback; a probe in the same interpreter shows no torch, transformers,
    lm-eval or vLLM was imported by the validation."""
    for i, (name, mutate) in enumerate(CLI_CASES.items()):
        f = tmp_path / f"p{i}.yaml"
        f.write_text(yaml.safe_dump(mutate(copy.deepcopy(BASE))))
        for cmd in (["gate"], ["run", "int8"]):
            p = subprocess.run([sys.executable, "-m", "evalgate", *cmd, "--params", str(f)], cwd=ROOT,
                               capture_output=True, text=True, timeout=120)
            err = p.stderr.strip()
            assert p.returncode == 2, (name, cmd, p.stdout[-500:], err[-1000:])
            assert err.count("\n") == 0 and err.startswith("config error: ") and "Traceback" not in err, (name, err)
    probe = (
        "import sys, json, yaml\n"
        "from evalgate.compose import load\n"
        "from evalgate.config import ConfigError\n"
        f"for f in {[str(tmp_path / f'p{i}.yaml') for i in range(len(CLI_CASES))]!r}:\n"
        "    try:\n        load(f)\n    except ConfigError:\n        pass\n    else:\n        raise SystemExit('accepted ' + f)\n"
        "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'lm_eval', 'vllm') if m in sys.modules)))\n"
    )
    p = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-1000:]
    assert json.loads(p.stdout.strip().splitlines()[-1]) == []
