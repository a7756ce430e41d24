"""Every config composes and validates; every kind of bad input fails with one line naming its key."""
import copy
from pathlib import Path

import pytest
import yaml

from evalgate.compose import check_variant_files, compose, validate
from evalgate.config import ConfigError, parse

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


@pytest.fixture(scope="module")
def params():
    return compose([], CONF)


def test_committed_params_match_conf(params):
    committed = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert committed == params, "params.yaml is stale: run `evalgate compose`"


LISTS = ("variant", "combo")  # groups whose option is a list of files


@pytest.mark.parametrize("group", sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in LISTS))
def test_every_option_composes(group):
    for option in sorted((CONF / group).glob("*.yaml")):
        parse(compose([f"{group}={option.stem}"], CONF))


@pytest.mark.parametrize("group", LISTS)
def test_every_variant_and_combination_file_validates(group):
    names = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    # fixture=cpu_draft: the `draft` variants need the fixture's draft model
    cfg = parse(compose(["variant=[]", "combo=[]", f"{group}=[{','.join(names)}]", "fixture=cpu_draft"], CONF))
    assert set(names) <= set(cfg.variants)  # the package line of each file matches its file name


def test_a_draft_variant_without_the_fixtures_draft_is_one_line_before_anything_runs():
    """The CPU default trains no draft (`fixture.draft: null`: none of its variants needs one); a variant
    that speculates with the fixture's draft is then refused at compose time, naming the fix."""
    assert parse(compose([], CONF)).raw["fixture"]["draft"] is None
    with pytest.raises(ConfigError) as e:
        parse(compose(["variant=[int8,draft]"], CONF))
    msg = str(e.value)
    assert "variants.draft.speculative.method" in msg and "fixture=cpu_draft" in msg and "\n" not in msg
    cfg = parse(compose(["variant=[int8,draft]", "fixture=cpu_draft"], CONF))
    target = parse(compose([], CONF)).raw["fixture"]["target"]
    assert cfg.raw["fixture"]["draft"] and cfg.raw["fixture"]["target"] == target   # the same target
    assert parse(compose(["preset=llamacpp"], CONF)).raw["fixture"]["draft"]   # its `draft` variant has one


def test_a_combination_merges_its_families():
    cfg = parse(compose(["variant=[]", "combo=[int8_prompt_lookup]"], CONF))
    v = cfg.variants["int8_prompt_lookup"]
    assert v.quantization["method"] == "int8" and v.speculative["method"] == "ngram"


@pytest.mark.parametrize("mutate, key", [
    (lambda p: p["engine"].update(name="tensorrt"), "engine.name"),
    (lambda p: p["gate"]["quality"]["fx_add"]["exact_match"].update(max_loss_rel_pct=150), "max_loss_rel_pct"),
    (lambda p: p["gate"]["quality"]["fx_add"]["exact_match"].update(max_loss_abs=-1), "max_loss_abs"),
    (lambda p: p["gate"]["quality"].update({"fx_nope/acc": {"max_loss_abs": 0.1}}), "gate.quality.fx_nope/acc"),
    (lambda p: p["variants"].update(baseline={}), "variants.baseline"),
    (lambda p: p.pop("baseline"), "baseline"),
    (lambda p: p["baseline"].update(quantization={"method": "int3"}), "baseline.quantization.method"),
    (lambda p: p["baseline"].update(quantization={"method": "w4a16"}), "baseline.quantization.method"),
    (lambda p: p["variants"]["int8"].update(colour="red"), "variants.int8.colour"),
    (lambda p: p["gate"]["sequential"].update(looks=[0.5, 0.25]), "gate.sequential.looks"),
    (lambda p: p["gate"]["sequential"].update(alpha=0.7), "gate.sequential.alpha"),
    (lambda p: p["gate"].update(slo={"p99_ttft_ms": 1}), "gate.slo.p99_ttft_ms"),
    (lambda p: p["gate"].update(slo={"ttft_ms": 0}), "gate.slo.ttft_ms"),
    (lambda p: p["gate"].update(limits={"p99_ttfb_ms": {"max": 1}}), "gate.limits.p99_ttfb_ms"),
    (lambda p: p["workload"].update(source="kafka"), "workload.source"),
    (lambda p: p["workload"].update(max_tokens=0), "workload.max_tokens"),
    (lambda p: p["workload"].update(tasks=[]), "workload.tasks"),
    (lambda p: (p["workload"].pop("tasks"), p["workload"].update(source="file", path=None)), "workload.path"),
    (lambda p: (p["workload"].pop("tasks"), p["workload"].update(source="random")), "workload.input_len"),
    (lambda p: p["load"].update(concurrency=[4, 1]), "load.concurrency"),
    (lambda p: p["load"].update(rates=[0]), "load.rates"),
    (lambda p: p["load"].update(requests={"min": 10, "max": 5}), "load.requests.max"),
    (lambda p: p["load"].update(target_ci_pct=0), "load.target_ci_pct"),
    (lambda p: p["load"].update(aa="yes"), "load.aa"),
    (lambda p: p["model"].update(source="ftp"), "model.source"),
    (lambda p: p["eval"].update(tasks=[]), "eval.tasks"),
])
def test_bad_input_names_the_key(params, mutate, key):
    bad = copy.deepcopy(params)
    mutate(bad)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as e:
        validate(bad, CONF)
    assert "\n" not in str(e.value)


def test_unknown_variant_is_a_config_error(params):
    with pytest.raises(ConfigError, match="variants.nope: unknown variant"):
        parse(params).variant("nope")


def test_a_variant_is_named_by_its_file(tmp_path):
    """A copied variant file that still names the old variant would silently merge into it (int8 run as
    int4, int8_copy never run): its package line must name its own file, checked by `evalgate compose`
    and by every stage (validate: `dvc exp run` composes conf/ without evalgate)."""
    import shutil

    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    check_variant_files(conf)
    (conf / "variant" / "int8_copy.yaml").write_text((CONF / "variant" / "int8.yaml").read_text()
                                                     .replace("method: int8", "method: int4"))
    message = (r"int8_copy\.yaml: a variant's name is its file name, but the file says "
               r"'# @package variants\.int8'; write '# @package variants\.int8_copy'")
    with pytest.raises(ConfigError, match=message):
        compose(["variant=[int8,int8_copy]"], conf)
    with pytest.raises(ConfigError, match=message):
        validate(yaml.safe_load((ROOT / "params.yaml").read_text()), conf)
    (conf / "variant" / "int8_copy.yaml").write_text("# @package variants.int8_copy\nquantization: {method: int4}\n")
    cfg = parse(compose(["variant=[int8,int8_copy]", "combo=[]"], conf))
    assert cfg.variants["int8"].quantization["method"] == "int8"
    assert cfg.variants["int8_copy"].quantization["method"] == "int4"
    (conf / "combo" / "int8_prompt_lookup.yaml").write_text(
        "# @package _global_\ndefaults:\n  - /variant@variants.other: [int8, prompt_lookup]\n")
    with pytest.raises(ConfigError, match="a combination's name is its file name"):
        check_variant_files(conf)


def test_null_threshold_removes_an_inherited_one_in_either_spelling():
    """A preset drops a gated metric its engine cannot evaluate with `metric: null`; the default may give it
    nested (`fx_recall: {acc: {...}}`) and the preset with slashes, or the other way round."""
    from evalgate.config import flatten_quality

    base = {"fx_add": {"exact_match": {"max_loss_abs": 0.02}}, "fx_recall": {"acc": {"max_loss_abs": 0.03}}}
    assert set(flatten_quality({**base, "fx_recall/acc": None})) == {"fx_add/exact_match"}
    assert set(flatten_quality({"fx_recall/acc": {"max_loss_abs": 0.03}, "fx_recall": {"acc": None}})) == set()
    assert set(flatten_quality(base)) == {"fx_add/exact_match", "fx_recall/acc"}
