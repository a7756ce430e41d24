"""CPU variants side by side: their loads and quality phases share the cores, a load profile has them all.

On the 2-core CPU a variant's evaluation and fidelity are Python and small tensors: one thread does them as
fast as two, so two variants at once, one thread each, take half the wall time; a load profile beside a
neighbour does not (int8's peak fell 324 → 242 tok/s, docs/results/cpu-2026-11-27-3). So `evalgate repro`
runs the variants of an in-process engine a few at a time (`Engine.side_by_side`), each in its supervised
worker as before, and the workers agree through one lock file: a worker holds it shared from before its
checks to its end (loading, evaluating, writing its results), exclusively while it profiles (a reader-writer
lock across processes: flock LOCK_SH / LOCK_EX). A profile therefore starts only when no other worker is
busy, and no other worker does anything during a profile but wait.

The worker learns this from its environment (`ENV`), so the stage's command is unchanged and plain
`dvc repro` (one variant at a time, no `ENV`) runs exactly as before. Hand-written: no library here runs
benchmark phases of separate processes under one such rule.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

ENV = "EVALGATE_LANES"   # "<lock file>:<threads while loading and evaluating>:<threads while profiling>"


@dataclass(frozen=True)
class Lanes:
    lock: Path
    share_threads: int
    alone_threads: int

    def env(self) -> dict[str, str]:
        return {ENV: f"{self.lock}:{self.share_threads}:{self.alone_threads}"}


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS has one, as on Linux)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def plan(lock: Path, side_by_side: int, cores: int | None = None) -> Lanes:
    """Lanes for `side_by_side` workers on `cores` (default: `usable_cores()`)."""
    cores = cores or usable_cores()
    return Lanes(Path(lock), max(1, cores // max(1, side_by_side)), cores)


def current() -> Lanes | None:
    spec = os.environ.get(ENV)
    if not spec:
        return None
    lock, share, alone = spec.rsplit(":", 2)
    return Lanes(Path(lock), int(share), int(alone))


class Lane:
    """A worker's place in the lanes (a no-op without `ENV`): `share()` from its start, `alone()` for its
    profile, `share()` again after it, `close()` at the end (or its exit: the kernel drops the lock with
    the process). `engine.use_threads(n)` sets its threads for each."""

    def __init__(self, engine):
        self.engine, self.lanes, self._f = engine, current(), None

    def _hold(self, op: int, threads: str) -> None:
        if self.lanes is None:
            return
        if self._f is None:
            self._f = open(self.lanes.lock, "a")  # noqa: SIM115 - held across phases, closed by close()
        fcntl.flock(self._f, op)   # a conversion SH → EX lets go first: two converting workers cannot deadlock
        self.engine.use_threads(getattr(self.lanes, threads))

    def share(self) -> None:
        self._hold(fcntl.LOCK_SH, "share_threads")

    def alone(self) -> None:
        self._hold(fcntl.LOCK_EX, "alone_threads")

    def close(self) -> None:
        if self._f is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._f, fcntl.LOCK_UN)
            self._f.close()
            self._f = None
