import os

import pytest

from evalgate.quiet import quiet_third_party

quiet_third_party()   # the same third-party noise the CLI drops
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A random 2-layer Llama and a 1-layer draft sharing a small BPE tokenizer, saved like the fixture."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("tiny")
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer, tk.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tk.train_from_iterator([f"{a}+{b}={a + b}\nthe cat sat on the mat {a}" for a in range(50) for b in range(20)],
                           trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
                                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    for name, layers in (("model", 2), ("draft", 1)):
        torch.manual_seed(0)
        m = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2))
        m.save_pretrained(d / name)
        tok.save_pretrained(d / name)
    from evalgate.config import ModelSpec

    return ModelSpec(source="local", id=str(d / "model"), draft=str(d / "draft"), dtype="float32")

