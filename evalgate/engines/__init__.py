"""Engine registry: the one place an engine is registered (name → adapter class, imported lazily so
that validating a config never imports torch or vLLM). A new engine: its adapter module (an
`evalgate.engines.base.Engine`) and one line here."""
from __future__ import annotations

import importlib

from evalgate.errors import ConfigError

ENGINES = {
    "hf": "evalgate.engines.hf:HFEngine",
    "vllm": "evalgate.engines.vllm:VLLMEngine",
    "llamacpp": "evalgate.engines.llamacpp:LlamaCppEngine",
}


def check_name(name: str) -> None:
    """A ConfigError naming `engine.name` unless it is registered."""
    if name not in ENGINES:
        raise ConfigError(f"engine.name: {name!r} is not one of {', '.join(ENGINES)}")


def get_engine(name: str, options: dict):
    check_name(name)
    module, _, cls = ENGINES[name].partition(":")
    return getattr(importlib.import_module(module), cls)(options)
