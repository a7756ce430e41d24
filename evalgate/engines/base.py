"""The engine interface: every engine (in-process or a server subprocess) is an adapter behind it.

An engine turns (model, variant) into a running `Endpoint` for the time of a `with` block: the `hf`
adapter loads the model in this process; a server adapter starts a process, waits for health and
stops it on exit. Nothing outside an adapter knows an engine's flags.
"""
from __future__ import annotations

import abc
import contextlib
import threading
import time
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
    text: str = ""


@dataclass
class ServeInfo:
    """What an endpoint reports about itself for the profile (memory, speculation, start time…)."""
    start_seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)


def record(req: dict, g: Generation, sent_at: float) -> dict:
    """A request's profile record (evalgate.profile reads these): times in seconds; `start` after the
    level began; `capped`: it ran to its max_tokens instead of ending on its own."""
    times = g.token_times
    n = len(times)
    return {"index": req.get("index"), "source": req.get("source"), "ok": n > 0, "prompt_tokens": g.prompt_tokens,
            "output_tokens": n, "start": sent_at, "ttft": times[0] if n else 0.0, "e2el": times[-1] if n else 0.0,
            "itl": [b - a for a, b in zip(times, times[1:])], "capped": n >= int(req["max_tokens"]), "text": g.text}


def wait_healthy(proc, log_path: Path, healthy, timeout: float, what: str, poll_s: float = 0.5) -> None:
    """Block until `healthy()` is true (the server adapters' health wait). The process dying first is a
    RuntimeError with its log's last lines, no health within `timeout` s a TimeoutError naming the log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = Path(log_path).read_text(errors="replace").strip().splitlines()[-15:]
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was healthy:\n" + "\n".join(tail))
        with contextlib.suppress(OSError, ValueError):   # not listening yet, or not ready (an error body)
            if healthy():
                return
        time.sleep(poll_s)
    raise TimeoutError(f"{what} not healthy after {timeout:.0f} s (see {log_path})")


class Endpoint(abc.ABC):
    """A served model: timed requests for the profile, an lm-eval model for the evaluation."""

    info: ServeInfo
    batch_size: int = 1         # requests the engine runs at once in the generic loop (static batches)
    supports_rate = False       # open-loop request-rate levels need a server's own load generator
    request_cache: bool = True  # lm-eval's request cache (`use_cache`) works with lm_eval_model()
    skipped_output_types: dict[str, str] = {}   # lm-eval output types it cannot evaluate → why (see Engine)
    own_fidelity = False        # reference_fidelity is the engine's own tool (else prompt_logprobs)

    def generate_batch(self, requests: list[dict], ignore_eos: bool = False) -> list[Generation]:
        """Greedy-generate the requests as one batch (each ends at EOS, a stop string or its
        `max_tokens`; `ignore_eos` runs each to its cap), recording token arrival times."""
        raise NotImplementedError(f"{type(self).__name__} has its own load generator (run_requests)")

    def run_requests(self, requests: list[dict], concurrency: int | None, rate: float | None = None,
                     burstiness: float = 1.0, ignore_eos: bool = False, warmup: int = 0) -> tuple[list[dict], float, dict]:
        """Send `requests` at one load level; returns (records, duration in s, engine extras).

        The generic closed loop for in-process engines: waves of `concurrency` requests sent together,
        served in static batches of at most `batch_size`, one after another (so at a concurrency above
        the batch size later requests wait, as they would behind a busy server)."""
        if rate:
            raise ValueError(f"{type(self).__name__}: no request-rate levels (closed-loop concurrency only)")
        for i in range(0, warmup, self.batch_size):
            self.generate_batch(requests[i:i + self.batch_size], ignore_eos)
        self.level_extras()   # the warm-up does not count
        c = concurrency or 1
        records, t0 = [], time.perf_counter()
        for w in range(0, len(requests), c):
            sent = time.perf_counter() - t0
            wave = requests[w:w + c]
            for b in range(0, len(wave), self.batch_size):
                batch = wave[b:b + self.batch_size]
                waited = time.perf_counter() - t0 - sent
                for req, g in zip(batch, self.generate_batch(batch, ignore_eos)):
                    g.token_times = [waited + t for t in g.token_times]
                    records.append(record(req, g, sent))
        return records, time.perf_counter() - t0, self.level_extras()

    def level_extras(self) -> dict:
        """Engine facts about the requests since the last call (e.g. speculative acceptance)."""
        return {}

    def reset_cache(self) -> None:
        """Empty the engine's prefix cache before a load level, so every level starts from the same
        state whatever ran before it (the A/A sweep, the quality phase); no-op without such a cache."""
        return None

    @abc.abstractmethod
    def lm_eval_model(self):
        """An `lm_eval.api.model.LM` that evaluates through this very endpoint."""

    def prompt_logprobs(self, texts: list[str], top_k: int) -> list[dict]:
        """Per text: `ids` [T] and, for positions 1…T−1, `top_ids`/`top_logprobs` [T−1, k] of the
        next-token distribution (fidelity against the baseline). Engines that cannot, return []."""
        return []

    def reference_fidelity(self, texts: list[str], baseline, out) -> dict[str, float] | None:
        """Engines with their own fidelity tool (llama.cpp: llama-perplexity's KL-divergence mode) compute it
        here, because their server cannot return prompt log-probs: with `baseline` None (the baseline
        itself) they store their reference in `out` (a VariantResults, through `out.file`); otherwise they
        return `fidelity/*` metrics against the baseline's folder. None: `prompt_logprobs` is used instead."""
        return None

    def engine_bench(self) -> dict[str, float]:
        """The engine's own micro-benchmark, run once after the load sweep (llama.cpp: llama-bench)."""
        return {}

    def stats(self) -> dict[str, float]:
        """Metrics the engine gathered while serving (peak memory, KV-cache capacity…)."""
        return dict(self.info.metrics)


class Engine(abc.ABC):
    name: str
    # True: `start` launches a server other processes can reach (`attach`), so the scheduler runs
    # several side by side; False: variants run one at a time (in-process models, or a CPU server)
    attachable = False
    # lm-eval output types this engine cannot evaluate → why (their tasks are skipped; gating one is an error)
    skipped_output_types: dict[str, str] = {}

    def __init__(self, options: dict):
        self.options = options

    def side_by_side(self) -> int:
        """How many of this engine's variants `evalgate repro` runs at once when it cannot attach to a server
        (not `attachable`): their loads and evaluations side by side, their profiles one at a time
        (evalgate.lanes). 1: one after the other."""
        return 1

    def use_threads(self, n: int) -> None:  # noqa: B027 - an optional hook
        """Compute with `n` threads from now on (evalgate.lanes: few beside other variants, all when alone)."""

    def preflight(self) -> None:  # noqa: B027 - an optional hook: most engines have nothing to check
        """Raise ConfigError if this engine cannot run on this machine at all (library missing)."""

    def warm_client(self) -> None:  # noqa: B027 - an optional hook
        """Import what the profile's client needs; the scheduler runs it in a thread while servers start."""

    def warm_machine(self, model: ModelSpec, variant: Variant | None = None, workdir: Path | None = None,  # noqa: B027
                     stop: threading.Event | None = None, wait_s: float = 900.0) -> str | None:
        """Fill this machine's per-machine caches that every server's first start would fill on its own
        (`variant`'s server, the first profiled, most of all; `workdir` for what it writes); `evalgate
        repro` runs it in a thread while the inputs are built (the model may appear only `wait_s` later)
        and sets `stop` when it ends. Returns a line for the log, or None where there was nothing to do."""
        return None

    def export_model(self, model: ModelSpec, out: Path) -> dict | None:
        """The `gguf` stage: write the model (and its draft) into `out` in the format this engine serves,
        when that is not the HF checkpoint (llama.cpp: GGUF F16 + an Ollama Modelfile), and return what was
        written (the stage's `gguf.json`). None: this engine serves the HF checkpoint itself."""
        return None

    @abc.abstractmethod
    def check(self, model: ModelSpec, variant: Variant) -> None:
        """Raise `VariantUnsupported` if this variant cannot run here. Must not load a model."""

    @abc.abstractmethod
    def serve(self, model: ModelSpec, variant: Variant, workdir: Path) -> AbstractContextManager[Endpoint]:
        """Start serving; the context manager stops the engine and frees its memory on exit."""
