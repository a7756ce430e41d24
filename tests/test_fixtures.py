"""Fixture unit tests: the properties the fixture's evaluation relies on, checked in seconds."""
import importlib
from itertools import islice

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from evalgate.toymodel import build
from evalgate.toymodel.corpus import KINDS, Corpus
from evalgate.toymodel.tasks import write_tasks
from evalgate.toymodel.tokenizer import train_tokenizer
from evalgate.toymodel.train import packed_batches

HELDOUT = {"add": 50, "copy": 10, "recall": 10, "sentence": 10, "count": 10, "needle": 4}
MIX = {"add": 0.5, "copy": 0.07, "recall": 0.25, "sentence": 0.08, "count": 0.05, "needle": 0.05}


def corpus(seed=0, heldout=HELDOUT):
    return Corpus(seed, heldout, add_digits=[1, 3, 1], copy_words=[3, 6], recall_pairs=[2, 4], count_len=[3, 10],
                  needle_sentences=[3, 6])


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(corpus().tokenizer_text(2000), 512)


def test_corpus_is_deterministic_per_seed():
    a, b, c = corpus(0), corpus(0), corpus(1)
    assert a.heldout == b.heldout and a.heldout != c.heldout
    assert list(islice(a.stream(MIX, "t"), 200)) == list(islice(b.stream(MIX, "t"), 200))
    assert list(islice(a.stream(MIX, "t"), 200)) != list(islice(a.stream(MIX, "d"), 200))


def test_heldout_never_in_training_stream():
    c = corpus(heldout={"add": 4000, "copy": 10, "recall": 400, "sentence": 200, "count": 200, "needle": 50})
    held = {it.text for items in c.heldout.values() for it in items}
    train = list(islice(c.stream(MIX, "t"), 30000))
    assert {it.kind for it in train} == set(KINDS)
    assert not held & {it.text for it in train}
    assert not held & set(c.tokenizer_text(2000))
    two_digit = [it for it in train if it.kind == "add" and len(it.prompt) == 6]
    assert len(two_digit) > 1000  # the 2-digit pairs not held out are still trained on


def test_tokenizer_digits_roundtrip_and_no_bos(tok):
    text = "recall t57 c31 ? c31\n12+345=357"
    ids = tok(text)["input_ids"]
    assert tok.bos_token_id not in ids and tok.decode(ids) == text
    assert tok.convert_ids_to_tokens(tok("12+345=")["input_ids"]) == ["1", "2", "+", "3", "4", "5", "="]
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3


def test_prompt_answer_split_matches_joint_encoding(tok):
    """lm-eval encodes prompts alone (generate) and prompt+choice jointly (loglikelihood)."""
    for it in islice(corpus().stream(MIX, "t"), 300):
        if it.prompt:
            assert tok.encode(it.prompt) + tok.encode(it.answer) == tok.encode(it.text), it


def test_packed_rows_equal_items_alone(tok):
    items = list(islice(corpus().stream(MIX, "t"), 40))
    ids, labels, pos = next(packed_batches(iter(items), tok, rows=2, seq_len=64))
    starts = (pos[0] == 0).nonzero().flatten().tolist()
    assert len(starts) >= 3 and starts[0] == 0
    assert (labels[0, : starts[1]] != -100).sum() == len(tok.encode(items[0].answer)) + 1   # the answer and EOS
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=64)).eval()
    packed = model(input_ids=ids[:1], position_ids=pos[:1], use_cache=False).logits[0]
    a, b = starts[1], starts[2]
    alone = model(input_ids=ids[:1, a:b]).logits[0]
    assert torch.allclose(packed[a:b], alone, atol=1e-5)


def test_tasks_load_in_lm_eval(tok, tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager

    monkeypatch.chdir(tmp_path)
    c = corpus()
    names = write_tasks(c.heldout, tmp_path / "fx" / "tasks", tok)
    assert "fx/tasks/fx_add.jsonl" in (tmp_path / "fx/tasks/fx_add.yaml").read_text()  # relative to cwd
    tasks = TaskManager(include_path=str(tmp_path / "fx" / "tasks")).load(names)["tasks"]
    assert set(tasks) == set(names)
    add, recall = tasks["fx_add"], tasks["fx_recall"]
    doc = add.test_docs()[0]
    assert add.doc_to_text(doc) + add.doc_to_target(doc) == c.heldout["add"][0].text
    doc = recall.test_docs()[0]
    item = c.heldout["recall"][0]
    assert recall.doc_to_choice(doc)[recall.doc_to_target(doc)] == item.answer
    assert recall.doc_to_text(doc) == item.prompt


def test_missing_keys_are_named(tmp_path):
    with pytest.raises(KeyError, match="seed.*device"):
        build({"bf16": True}, tmp_path)


def test_bf16_setting():
    from evalgate.toymodel.train import resolve_bf16

    cpu = torch.device("cpu")
    assert resolve_bf16(False, cpu) is False and resolve_bf16(True, cpu) is True
    assert isinstance(resolve_bf16("auto", cpu), bool)
    with pytest.raises(ValueError, match="auto"):
        resolve_bf16("yes", cpu)


def test_prefetched_batches_are_the_same_batches(tok):
    """train() builds batches in a background thread: the same ones in the same order, and an error in
    building one is raised at the `next` that wanted it."""
    from evalgate.toymodel.train import Prefetch

    direct = packed_batches(corpus().stream(MIX, "t"), tok, rows=4, seq_len=64)
    pre = Prefetch(packed_batches(corpus().stream(MIX, "t"), tok, rows=4, seq_len=64))
    try:
        for _ in range(5):
            assert all(torch.equal(a, b) for a, b in zip(next(direct), next(pre)))
    finally:
        pre.close()

    def failing():
        yield "first"
        raise ValueError("bad batch")

    bad = Prefetch(failing())
    assert next(bad) == "first"
    with pytest.raises(ValueError, match="bad batch"):
        next(bad)
    bad.close()


def test_no_draft_is_trained_when_the_configuration_needs_none(tmp_path):
    """`draft: null` (the CPU default: no variant speculates with a draft) trains the target only; the
    draft folder, a DVC output, says why it is empty, and the gguf stage and the engines see no draft."""
    import yaml

    from evalgate.config import ModelSpec
    from evalgate.models import has_draft

    cfg = yaml.safe_load(open("conf/fixture/tiny.yaml"))
    metrics = build({**cfg, "draft": None}, tmp_path)
    assert (tmp_path / "model" / "config.json").exists() and (tmp_path / "tasks").is_dir()
    assert not any(k.startswith(("train_seconds_draft", "draft_")) for k in metrics)
    assert "`fixture.draft` is null" in (tmp_path / "draft" / "README.md").read_text()
    assert not (tmp_path / "draft" / "config.json").exists()
    assert not has_draft(ModelSpec("local", str(tmp_path / "model"), draft=str(tmp_path / "draft")))
    assert has_draft(ModelSpec("local", str(tmp_path / "model"), draft=str(tmp_path / "model")))
    assert has_draft(ModelSpec("hub", "org/target", draft="org/draft")) and not has_draft(ModelSpec("hub", "org/t"))


def test_varlen_attention_equals_the_packed_mask(tok, monkeypatch):
    """The GPU fixture's varlen path (segments from the packed positions, the kwargs through the model, the
    reshapes around the kernel) gives sdpa's block-diagonal result; FlashAttention's kernel is CUDA-only, so a
    per-segment causal sdpa stands in for it here (tests/test_gpu.py checks the real kernel)."""
    import torch.nn.attention.varlen as varlen_mod
    from torch.nn.functional import scaled_dot_product_attention as sdpa
    from transformers import AttentionInterface

    T = importlib.import_module("evalgate.toymodel.train")  # the module, not the function the package exports

    def reference(q, k, v, cu_q, cu_k, max_q, max_k, **kw):
        assert torch.equal(cu_q, cu_k) and kw.get("is_causal", kw.get("window_size") == (-1, 0))
        out = torch.empty_like(q)
        for a, b in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
            seg = [t[a:b].transpose(0, 1) for t in (q, k, v)]
            out[a:b] = sdpa(*seg, is_causal=True, scale=kw.get("scale")).transpose(0, 1)
        return out

    monkeypatch.setattr(varlen_mod, "varlen_attn", reference)
    AttentionInterface.register(T.VARLEN, T.varlen_attention)
    items = list(islice(corpus().stream(MIX, "t"), 60))
    ids, _, pos = next(packed_batches(iter(items), tok, rows=2, seq_len=96))
    cu, longest = T.packed_segments(pos)
    assert cu[0] == 0 and cu[-1] == ids.numel() and longest == int((cu[1:] - cu[:-1]).max())
    assert set(cu.tolist()) >= {0, 96}  # a row boundary always starts a segment
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=64)).eval()
    model.set_attn_implementation("sdpa")
    masked = model(input_ids=ids, position_ids=pos, use_cache=False).logits
    model.set_attn_implementation(T.VARLEN)
    seg = dict(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest)
    varlen = model(input_ids=ids, position_ids=pos, use_cache=False, **seg).logits
    assert torch.allclose(masked, varlen, atol=1e-5)
    # and not the same as attending across items: the test can tell a wrong segmentation
    whole = torch.tensor([0, ids.numel() // 2, ids.numel()], dtype=torch.int32)
    crossed = model(input_ids=ids, position_ids=pos, use_cache=False, cu_seq_lens_q=whole, cu_seq_lens_k=whole,
                    max_length_q=96, max_length_k=96).logits
    assert not torch.allclose(masked, crossed, atol=1e-3)


def test_varlen_is_refused_off_cuda():
    from evalgate.toymodel.train import check_attn

    with pytest.raises(ValueError, match="varlen runs on CUDA with bf16 only"):
        check_attn("varlen", torch.device("cpu"), True)
    check_attn("sdpa", torch.device("cpu"), False)


def _weights_differ(a: dict, b: dict) -> float:
    """The largest difference between two state dicts' tensors, relative to each tensor's largest value.
    Two CPU builds of the tiny fixture from one seed are bitwise equal in most runs, not all: in 3 of 25
    pairs (one after the other against the draft beside; 2026-11-28, this 2-core Xeon, torch 2.13 with MKL)
    the target or the draft differed, by at most 3.5e-5 absolute, 4.2e-4 relative, with the same metrics;
    MKL_CBWR=AUTO,STRICT did not remove it (1 of those 10), and the cause is not found. A
    different seed, stream or step count moves them by order 1, so 1e-3 still tells "the same model"."""
    assert a.keys() == b.keys()
    return max(((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-12)).item() for k in a)


def test_draft_trained_beside_the_target_is_the_same_draft(tmp_path):
    """On CUDA the draft trains in a second process while the target trains (build's draft_beside):
    the same seed, stream and steps as one after the other, so the same weights and the same metrics
    (timings aside); here on the CPU with the tiny fixture (the weights to float rounding: `_weights_differ`)."""
    import yaml
    from safetensors.torch import load_file

    cfg = yaml.safe_load(open("conf/fixture/tiny.yaml"))
    one = build(cfg, tmp_path / "one", draft_beside=False)
    two = build(cfg, tmp_path / "two", draft_beside=True)
    timing = ("train_seconds_target", "train_seconds_draft", "eval_seconds_target", "eval_seconds_draft", "build_seconds")
    assert list(one) == list(two)  # metrics.json keeps its order: target, then draft
    assert {k: v for k, v in one.items() if k not in timing} == {k: v for k, v in two.items() if k not in timing}
    for folder in ("model", "draft"):
        a, b = (load_file(tmp_path / run / folder / "model.safetensors") for run in ("one", "two"))
        assert _weights_differ(a, b) < 1e-3, folder


def test_deterministic_fixture_trains_under_torch_deterministic_algorithms_and_puts_the_setting_back(tmp_path, monkeypatch):
    """`fixture.deterministic: true` trains both models with torch's deterministic algorithms on, strict
    (an op without a deterministic kernel would raise), the spawned draft's process too; the weights are
    those of a plain build (to float rounding, `_weights_differ`), and the process's own setting is left
    as it was."""
    import yaml
    from safetensors.torch import load_file

    import evalgate.toymodel as toymodel

    cfg = yaml.safe_load(open("conf/fixture/tiny.yaml"))
    seen = []
    real_train = toymodel.train

    def train(*a, **k):
        seen.append((torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()))
        return real_train(*a, **k)

    monkeypatch.setattr(toymodel, "train", train)
    plain = build(cfg, tmp_path / "plain", draft_beside=False)
    assert seen == [(False, False), (False, False)]
    seen.clear()
    strict = build({**cfg, "deterministic": True}, tmp_path / "strict", draft_beside=True)
    assert seen == [(True, False)]   # the target, here; the draft trained in its own (spawned) process
    assert not torch.are_deterministic_algorithms_enabled()
    assert plain["target_add_exact_match"] == strict["target_add_exact_match"]
    for folder in ("model", "draft"):
        a, b = (load_file(tmp_path / run / folder / "model.safetensors") for run in ("plain", "strict"))
        assert _weights_differ(a, b) < 1e-3, folder


def test_all_but_the_weights_is_written_before_the_model_trains(tmp_path, monkeypatch):
    """The engine's per-machine warm-up (vLLM: the model started with random weights) needs the model's
    folder without its weights; the fixture writes it before training, so the warm-up runs while the model
    trains, not after. Those files are the bytes the trained model writes again."""
    import yaml

    import evalgate.toymodel as toymodel

    seen, real = [], toymodel.train

    def spy(*args):
        seen.append({f.name: f.read_bytes() for f in (tmp_path / "model").iterdir()})
        return real(*args)

    monkeypatch.setattr(toymodel, "train", spy)
    build({**yaml.safe_load(open("conf/fixture/tiny.yaml")), "draft": None}, tmp_path)
    early = seen[0]
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= set(early)
    assert not any(name.endswith(".safetensors") for name in early)
    assert all((tmp_path / "model" / name).read_bytes() == data for name, data in early.items())
