"""Engine registry: the one place an engine is registered (name → adapter class, imported lazily so
that validating a config never imports torch or vLLM)."""
from __future__ import annotations

import importlib

ENGINES = {
    "hf": "evalgate.engines.hf:HFEngine",
    "vllm": "evalgate.engines.vllm:VLLMEngine",
    "llamacpp": "evalgate.engines.llamacpp:LlamaCppEngine",
}


def get_engine(name: str, options: dict):
    from evalgate.config import ConfigError

    if name not in ENGINES:
        raise ConfigError(f"engine.name: {name!r} is not one of {', '.join(ENGINES)}")
    module, _, cls = ENGINES[name].partition(":")
    return getattr(importlib.import_module(module), cls)(options)
