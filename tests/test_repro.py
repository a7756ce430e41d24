"""evalgate.repro's serial path: which DVC commands it runs (DVC itself faked: the order and the arguments
are what matters here; tests/test_e2e.py runs the real thing)."""
from __future__ import annotations

import subprocess
import types

import pytest

from evalgate import repro


@pytest.fixture
def calls(monkeypatch):
    log: list[tuple[str, ...]] = []

    def dvc(*args, check=True, capture=False):
        log.append(args)
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(repro, "dvc", dvc)
    monkeypatch.setattr(repro, "stale", lambda names: list(names))
    engine = types.SimpleNamespace(preflight=lambda: None, attachable=False)
    monkeypatch.setattr("evalgate.engines.get_engine", lambda name, options: engine)
    return log


def cfg():
    return types.SimpleNamespace(engine={"name": "hf"}, variants={"baseline": {}, "int8": {}, "int4": {}})


def test_serial_repro_is_plain_dvc_repro(calls):
    assert repro._repro(cfg(), serial=True) == 0
    assert calls[-1] == ("repro", "--keep-going") and not any("--force" in c for c in calls)


def test_no_run_cache_runs_every_stale_variant_command(calls):
    """After `gpu/session.sh fresh` the variants' outputs are gone but DVC's cache still holds them: plain
    `dvc repro` checked them out ("is cached - skipping run", H100 2026-11-26), `--no-run-cache` too."""
    assert repro._repro(cfg(), serial=True, no_run_cache=True) == 0
    forced = [c for c in calls if "--force" in c]
    assert forced == [("repro", "--force", "--single-item", s) for s in ("baseline", "run@int8", "run@int4")]
    assert calls[-1] == ("repro", "--keep-going")    # then gate and report (nothing left to run)
