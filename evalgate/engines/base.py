"""The engine interface: every engine (in-process or a server subprocess) is an adapter behind it.

An engine turns (model, variant) into a running `Endpoint` for the time of a `with` block: the `hf`
adapter loads the model in this process; a server adapter starts a process, waits for health and
stops it on exit. Nothing outside an adapter knows an engine's flags.
"""
from __future__ import annotations

import abc
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from evalgate.config import ModelSpec, Variant


class VariantUnsupported(RuntimeError):
    """This engine cannot run this variant here (method unknown to it, library missing, …).

    Raised by `Engine.check` before anything loads; the variant is rejected with this message and
    the other variants still run."""


@dataclass
class Generation:
    """One timed request: token arrival times in seconds after the request was sent."""
    token_times: list[float]
    token_ids: list[int] = field(default_factory=list)
    prompt_tokens: int = 0


@dataclass
class ServeInfo:
    """What an endpoint reports about itself for the profile (memory, speculation, start time…)."""
    start_seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)


class Endpoint(abc.ABC):
    """A served model: timed generation for the profile, an lm-eval model for the evaluation."""

    info: ServeInfo
    batch_size: int = 1    # requests the profile sends at once
    request_cache: bool = True  # lm-eval's request cache (`use_cache`) works with lm_eval_model()

    @abc.abstractmethod
    def generate(self, prompt: str, output_len: int) -> Generation:
        """Greedy-generate exactly `output_len` tokens (EOS ignored), recording token arrival times."""

    def generate_batch(self, prompts: list[str], output_len: int) -> list[Generation]:
        """`batch_size` requests at once; engines that batch override this."""
        return [self.generate(p, output_len) for p in prompts]

    @abc.abstractmethod
    def lm_eval_model(self):
        """An `lm_eval.api.model.LM` that evaluates through this very endpoint."""

    def prompt_logprobs(self, texts: list[str], top_k: int) -> list[dict]:
        """Per text: `ids` [T] and, for positions 1…T−1, `top_ids`/`top_logprobs` [T−1, k] of the
        next-token distribution (fidelity against the baseline). Engines that cannot, return []."""
        return []

    def bench(self, dataset: Path, wl: dict, out_dir: Path) -> dict | None:
        """The engine's own load generator, if it has one ({concurrency: result in vLLM's keys});
        None: the generic timed-request loop of `evalgate.profile` is used instead."""
        return None

    def stats(self) -> dict[str, float]:
        """Metrics the engine gathered while serving (peak memory, speculative acceptance…)."""
        return dict(self.info.metrics)


class Engine(abc.ABC):
    name: str

    def __init__(self, options: dict):
        self.options = options

    def preflight(self) -> None:
        """Raise ConfigError if this engine cannot run on this machine at all (library missing)."""

    @abc.abstractmethod
    def check(self, model: ModelSpec, variant: Variant) -> None:
        """Raise `VariantUnsupported` if this variant cannot run here. Must not load a model."""

    @abc.abstractmethod
    def serve(self, model: ModelSpec, variant: Variant, workdir: Path) -> AbstractContextManager[Endpoint]:
        """Start serving; the context manager stops the engine and frees its memory on exit."""
