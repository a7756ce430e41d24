"""evalgate.repro: which DVC commands it runs (DVC itself faked: the order and the arguments
are what matters here; tests/test_e2e.py runs the real thing)."""
from __future__ import annotations

import contextlib
import subprocess
import time
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
    monkeypatch.setattr(repro, "stale", lambda names, known=None: list(names))
    engine = types.SimpleNamespace(preflight=lambda: None, attachable=False, warm_machine=lambda model, *a: None)
    monkeypatch.setattr("evalgate.engines.get_engine", lambda name, options: engine)
    return log


def cfg():
    return types.SimpleNamespace(engine={"name": "hf"}, variants={"baseline": {}, "int8": {}, "int4": {}}, model=None)


def test_serial_repro_is_plain_dvc_repro(calls, monkeypatch):
    built = []
    monkeypatch.setattr(repro, "_warm_imports", built.append)   # the serial stages prepare in their own processes
    assert repro._repro(cfg(), serial=True) == 0
    assert built == []
    assert calls[-1] == ("repro", "--keep-going") and not any("--force" in c for c in calls)


def test_no_run_cache_runs_every_stale_variant_command(calls):
    """After `gpu/session.sh fresh` the variants' outputs are gone but DVC's cache still holds them: plain
    `dvc repro` checked them out ("is cached - skipping run", H100 2026-11-26), `--no-run-cache` too."""
    assert repro._repro(cfg(), serial=True, no_run_cache=True) == 0
    forced = [c for c in calls if "--force" in c]
    assert forced == [("repro", "--force", "--single-item", s) for s in ("baseline", "run@int8", "run@int4")]
    assert calls[-1] == ("repro", "--keep-going")    # then gate and report (nothing left to run)


@pytest.fixture
def scheduled(monkeypatch, tmp_path):
    """The scheduled path with DVC, the variants' preparation and the scheduler faked; `status`: what
    `dvc status` reports changed."""
    monkeypatch.chdir(tmp_path)
    log: list[tuple[str, ...]] = []
    status: set[str] = set()

    def dvc(*args, check=True, capture=False):
        log.append(args)
        out = "{" + ", ".join(f'"dvc.yaml:{s}": []' for s in sorted(status)) + "}" if args[0] == "status" else ""
        return subprocess.CompletedProcess(args, 0, out, "")

    monkeypatch.setattr(repro, "dvc", dvc)
    monkeypatch.setattr(repro, "commit", lambda targets: log.append(("commit", *targets)))
    engine = types.SimpleNamespace(preflight=lambda: None, attachable=True, warm_machine=lambda model, *a: None)
    monkeypatch.setattr("evalgate.engines.get_engine", lambda name, options: engine)
    monkeypatch.setattr("evalgate.runner.prepare", lambda cfg, name, *a: types.SimpleNamespace(name=name))
    ran = []
    @contextlib.contextmanager
    def scheduled(cfg, eng, slots, paths, ahead=None):
        ran.append(len(slots))
        yield
        log.append(("servers stopped",))

    monkeypatch.setattr("evalgate.schedule.scheduled", scheduled)
    monkeypatch.setattr("evalgate.schedule.Slot", lambda job: job)

    def gate_and_report(step=None):
        log.append(("gate+report",))
        return 0

    monkeypatch.setattr(repro, "gate_and_report", gate_and_report)
    monkeypatch.setattr(repro, "_warm_imports", lambda cfg: None)   # lm-eval's task index: not here
    monkeypatch.setattr(repro, "_warm_checkpoint_imports", lambda: None)   # nor torch's import
    return types.SimpleNamespace(log=log, status=status, ran=ran)


def scheduled_cfg():
    return types.SimpleNamespace(engine={"name": "vllm"}, variants={"baseline": {}, "fp8": {}},
                                 eval={"tasks": ["fx_add"]}, model=None,
                                 variant=lambda n: types.SimpleNamespace(name=n, quantization={"method": n}))


def test_scheduled_repro_skips_fresh_inputs_and_commits_variants_gate_and_report_at_once(scheduled):
    """One `dvc status` decides; with the inputs fresh no `dvc repro` of them runs; after the scheduler,
    gate and report run in this process while the servers stop, and then one `dvc commit` records the
    variants and both stages (the `dvc repro` this replaces cost ≈ 17 s of a 335 s GPU verdict)."""
    scheduled.status.update({"run@fp8"})
    assert repro._repro(scheduled_cfg()) == 0
    assert scheduled.ran == [1]
    assert scheduled.log == [("status", "--json"), ("gate+report",),
                             ("servers stopped",), ("commit", "run@fp8", "gate", "report")]


def test_scheduled_repro_runs_stale_inputs_first(scheduled, monkeypatch):
    """The fixture and gguf through `dvc repro`; the stale quantize@ stages through their command in this
    process and one `dvc commit` (a process and a lock per variant otherwise), then `dvc repro workload`."""
    monkeypatch.setattr("evalgate.stages.quantize", lambda cfg, variant, out, gguf: scheduled.log.append(
        ("quantize", variant, str(out))))
    scheduled.status.update({"quantize@fp8", "run@fp8"})
    assert repro._repro(scheduled_cfg()) == 0
    assert scheduled.log[1:6] == [("repro", "fixture", "gguf"), ("status", "--json"),
                                  ("quantize", "fp8", "checkpoints/fp8"), ("commit", "quantize@fp8"),
                                  ("repro", "workload")]
    assert scheduled.log[6] == ("status", "--json")   # asked again, after the inputs ran
    assert scheduled.log[-1] == ("commit", "run@fp8", "gate", "report")


def early_setup(scheduled, monkeypatch, tmp_path):
    """The scheduled fixture with a vLLM-like engine and a preset of baseline, fp8 (on the fly) and w4a16
    (an offline checkpoint, built by quantize@w4a16); servers started ahead are recorded."""
    from evalgate import schedule

    methods = {"baseline": "none", "fp8": "fp8", "w4a16": "w4a16"}
    c = types.SimpleNamespace(engine={"name": "vllm"}, variants=dict.fromkeys(methods, {}), eval={"tasks": ["fx_add"]},
                              model=types.SimpleNamespace(gguf=None),
                              variant=lambda n: types.SimpleNamespace(name=n, quantization={"method": methods[n]}))
    engine = types.SimpleNamespace(preflight=lambda: None, attachable=True, warm_machine=lambda model, *a: None,
                                   check=lambda model, variant: None)
    monkeypatch.setattr("evalgate.engines.get_engine", lambda name, options: engine)
    monkeypatch.setattr("evalgate.stages.quantize", lambda cfg, variant, out, gguf: scheduled.log.append(("quantize", variant)))
    monkeypatch.setattr("evalgate.models.served_model", lambda model, variant, checkpoint, gguf: model)
    prepared, stopped, handed = [], [], []

    def prepare(cfg, name, *a):
        prepared.append(name)
        return types.SimpleNamespace(name=name)

    monkeypatch.setattr("evalgate.runner.prepare", prepare)

    def start_ahead(cfg, eng, jobs, log=print):
        scheduled.log.append(("ahead", *[j.name for j in jobs]))
        for j in jobs:
            j.server, j.started_at = types.SimpleNamespace(stop=lambda n=j.name: stopped.append(n)), 1.0
        return schedule.Ahead(list(jobs), (10, 20))

    monkeypatch.setattr(schedule, "start_ahead", start_ahead)

    @contextlib.contextmanager
    def scheduled_fn(cfg, eng, slots, paths, ahead=None):
        handed.append(([s.name for s in slots], ahead))
        yield
        for s in slots:   # the Scheduler stops every server it ran (Scheduler.running), its own way
            s.server = None

    monkeypatch.setattr(schedule, "scheduled", scheduled_fn)
    return types.SimpleNamespace(cfg=c, prepared=prepared, stopped=stopped, handed=handed, engine=engine)


def test_every_stale_variants_server_starts_once_its_checkpoint_is_built_beside_the_workload(scheduled, monkeypatch, tmp_path):
    """After a new fixture, the stale quantize@ stages run first and are committed (before any server reads a
    checkpoint: the commit relinks its files); then every stale variant's server starts, w4a16's on its new
    checkpoint too, beside the workload stage. Before, quantize@w4a16 ran beside six starting servers (34.4 s
    on an H100) and its server, started after it, held every profile back. The scheduler gets them all
    started, each variant prepared once."""
    e = early_setup(scheduled, monkeypatch, tmp_path)
    scheduled.status.update({"fixture", "quantize@fp8", "quantize@w4a16", "baseline", "run@fp8", "run@w4a16"})
    assert repro._repro(e.cfg) == 0
    log = scheduled.log
    assert log[1] == ("repro", "fixture", "gguf") and log[2] == ("status", "--json")
    assert log[3:6] == [("quantize", "fp8"), ("quantize", "w4a16"), ("commit", "quantize@fp8", "quantize@w4a16")]
    # the workload stage: a process, any time beside the starts (in this thread, after the commit)
    assert sorted(log[6:8]) == [("ahead", "baseline", "fp8", "w4a16"), ("repro", "workload")]
    assert sorted(e.prepared) == ["baseline", "fp8", "w4a16"]   # once each
    (names, ahead), = e.handed
    assert names == ["baseline", "fp8", "w4a16"] and [s.name for s in ahead.slots] == ["baseline", "fp8", "w4a16"]
    assert ahead.capacity == (10, 20) and e.stopped == []


def test_the_checkpoints_imports_run_while_the_fixture_trains_after_lm_evals(scheduled, monkeypatch, tmp_path):
    """With a compressed-tensors checkpoint to build (w4a16), its libraries are imported beside the fixture's
    training, after lm-eval's warm-up (never beside it: transformers' lazy attributes raced) and before the
    quantize commands; with none stale, not at all."""
    e = early_setup(scheduled, monkeypatch, tmp_path)
    order = []

    def lm_eval_imports(cfg):
        time.sleep(0.2)
        order.append("lm-eval")

    def checkpoint_imports():
        time.sleep(0.2)
        order.append("checkpoint libraries")

    def fixture(*args, check=True, capture=False):
        if args == ("repro", "fixture", "gguf"):
            order.append("fixture built")
        return real(*args, check=check, capture=capture)

    real = repro.dvc
    monkeypatch.setattr(repro, "dvc", fixture)
    monkeypatch.setattr(repro, "_warm_imports", lm_eval_imports)
    monkeypatch.setattr(repro, "_warm_checkpoint_imports", checkpoint_imports)
    monkeypatch.setattr("evalgate.stages.quantize", lambda cfg, variant, out, gguf: order.append(f"quantize {variant}"))
    scheduled.status.update({"fixture", "quantize@fp8", "quantize@w4a16", "baseline", "run@fp8", "run@w4a16"})
    assert repro._repro(e.cfg) == 0
    assert order == ["fixture built", "lm-eval", "checkpoint libraries", "quantize fp8", "quantize w4a16"]

    order.clear()
    scheduled.status.difference_update({"quantize@w4a16"})
    assert repro._repro(e.cfg) == 0
    assert order == ["fixture built", "lm-eval", "quantize fp8"]


def test_servers_started_ahead_are_stopped_when_the_inputs_fail(scheduled, monkeypatch, tmp_path):
    e = early_setup(scheduled, monkeypatch, tmp_path)
    scheduled.status.update({"fixture", "baseline", "run@fp8", "run@w4a16"})
    real = repro.dvc

    def dvc(*args, check=True, capture=False):
        if args == ("repro", "workload"):
            e.handed.append("workload")   # (the servers' thread may still be starting them)
            time.sleep(0.2)
            raise SystemExit("dvc repro workload failed with exit code 1")
        return real(*args, check=check, capture=capture)

    monkeypatch.setattr(repro, "dvc", dvc)
    with pytest.raises(SystemExit, match="workload"):
        repro._repro(e.cfg)
    assert sorted(e.stopped) == ["baseline", "fp8", "w4a16"] and e.handed == ["workload"]


def test_the_engines_warm_up_is_stopped_and_awaited_when_the_run_ends(scheduled, monkeypatch, tmp_path):
    """The engine's warm-up (vLLM: the baseline's server with random weights while the fixture trains) runs
    beside the inputs for the baseline; when the run ends (here: an input failed) it is told to stop and the
    run waits for it, so no warm-up server outlives the run."""
    e = early_setup(scheduled, monkeypatch, tmp_path)
    got = []

    def warm_machine(model, variant, workdir, stop):
        got.append(variant.name)
        got.append("stopped" if stop.wait(30) else "never stopped")

    e.engine.warm_machine = warm_machine
    scheduled.status.update({"fixture", "baseline", "run@fp8", "run@w4a16"})
    real = repro.dvc

    def dvc(*args, check=True, capture=False):
        if args == ("repro", "workload"):
            raise SystemExit("dvc repro workload failed with exit code 1")
        return real(*args, check=check, capture=capture)

    monkeypatch.setattr(repro, "dvc", dvc)
    with pytest.raises(SystemExit, match="workload"):
        repro._repro(e.cfg)
    assert got == ["baseline", "stopped"]


def test_servers_started_ahead_are_stopped_when_the_schedule_fails_to_begin(scheduled, monkeypatch, tmp_path):
    """Handed over but the scheduler never took them (its setup failed): they are stopped, not left running."""
    from evalgate import schedule

    e = early_setup(scheduled, monkeypatch, tmp_path)

    @contextlib.contextmanager
    def broken(cfg, eng, slots, paths, ahead=None):
        raise RuntimeError("no forkserver")
        yield

    monkeypatch.setattr(schedule, "scheduled", broken)
    scheduled.status.update({"fixture", "baseline", "run@fp8", "run@w4a16"})
    with pytest.raises(RuntimeError, match="forkserver"):
        repro._repro(e.cfg)
    assert sorted(e.stopped) == ["baseline", "fp8", "w4a16"]


def test_no_server_starts_ahead_for_a_variant_whose_quantization_failed_or_that_the_engine_cannot_serve(
        scheduled, monkeypatch, tmp_path):
    """quantize@w4a16 recorded an error (its variant is rejected with it, prepared in the schedule, where its
    MLflow run names the new workload), and the engine refuses fp8: only the baseline starts ahead."""
    import json

    from evalgate.engines.base import VariantUnsupported

    e = early_setup(scheduled, monkeypatch, tmp_path)

    def quantize(cfg, variant, out, gguf):
        out.mkdir(parents=True, exist_ok=True)
        (out / "checkpoint.json").write_text(json.dumps({"checkpoint": False, "error": "OutOfMemoryError: x"}))

    def check(model, variant):
        if variant.name == "fp8":
            raise VariantUnsupported("no fp8 here")

    monkeypatch.setattr("evalgate.stages.quantize", quantize)
    e.engine.check = check
    scheduled.status.update({"fixture", "quantize@w4a16", "baseline", "run@fp8", "run@w4a16"})
    assert repro._repro(e.cfg) == 0
    assert ("ahead", "baseline") in scheduled.log
    (names, ahead), = e.handed
    assert names == ["baseline", "fp8", "w4a16"] and [s.name for s in ahead.slots] == ["baseline"]


def test_a_stale_baseline_makes_every_variant_stale_but_no_quantize_stage():
    """`dvc status` answers for the whole pipeline: a changed baseline means every run@ will be (they read
    its results), and says nothing about the quantize stages, which do not depend on it."""
    hit = {"baseline", "quantize@fp8", "gate"}
    assert repro.stale(["baseline", "run@fp8", "run@w4a16"], hit) == ["baseline", "run@fp8", "run@w4a16"]
    assert repro.stale(["quantize@fp8", "quantize@w4a16"], hit) == ["quantize@fp8"]
    assert repro.stale(["baseline", "run@fp8"], {"run@fp8", "report"}) == ["run@fp8"]


def test_scheduled_repro_with_nothing_stale_leaves_gate_and_report_to_dvc(scheduled):
    assert repro._repro(scheduled_cfg()) == 0
    assert scheduled.ran == [] and scheduled.log[-1] == ("repro",) and ("gate+report",) not in scheduled.log


def test_in_process_engines_run_each_stage_command_here_then_one_commit(scheduled, monkeypatch):
    """Engines that cannot share a device (hf, llamacpp) run the stale stages one at a time, each through
    its stage's own command (a supervised worker process), without `dvc repro` around them; then gate
    and report in this process and one `dvc commit` (that wrapper cost ≈ 49 s of a 438 s CPU default)."""
    engine = types.SimpleNamespace(preflight=lambda: None, attachable=False, warm_machine=lambda model, *a: None,
                                   side_by_side=lambda: 1)
    monkeypatch.setattr("evalgate.engines.get_engine", lambda name, options: engine)
    monkeypatch.setattr(repro, "run_stage", lambda cfg, st: scheduled.log.append(("run", st)) or 0)
    scheduled.status.update({"baseline"})
    assert repro._repro(cfg()) == 0
    assert scheduled.ran == []   # no scheduler
    assert [c for c in scheduled.log if c[0] != "status"] == [
        ("run", "baseline"), ("run", "run@int8"), ("run", "run@int4"), ("gate+report",),
        ("commit", "baseline", "run@int8", "run@int4", "gate", "report")]


def test_in_process_engines_run_variants_side_by_side_after_the_baseline(scheduled, monkeypatch):
    """With `Engine.side_by_side` > 1 (hf on a CPU of that many cores): the baseline alone first (every
    variant compares with it), then the variants in lanes (run_side_by_side), then the same gate, report
    and one commit."""
    engine = types.SimpleNamespace(preflight=lambda: None, attachable=False, warm_machine=lambda model, *a: None,
                                   side_by_side=lambda: 4)
    monkeypatch.setattr("evalgate.engines.get_engine", lambda name, options: engine)
    monkeypatch.setattr(repro, "run_stage", lambda cfg, st: scheduled.log.append(("run", st)) or 0)
    monkeypatch.setattr(repro, "run_side_by_side", lambda cfg, stages, lanes, step: scheduled.log.append(
        ("side by side", lanes, *stages)))
    scheduled.status.update({"baseline"})
    assert repro._repro(cfg()) == 0
    assert [c for c in scheduled.log if c[0] != "status"] == [
        ("run", "baseline"), ("side by side", 2, "run@int8", "run@int4"), ("gate+report",),
        ("commit", "baseline", "run@int8", "run@int4", "gate", "report")]


def test_in_process_engines_stop_when_the_baseline_failed_transiently(scheduled, monkeypatch, tmp_path):
    """A baseline that failed transiently leaves nothing to compare with: no variant runs, nothing is
    committed, gate and report run on what there is, and the command exits 75 (the next repro retries)."""
    import json

    engine = types.SimpleNamespace(preflight=lambda: None, attachable=False, warm_machine=lambda model, *a: None,
                                   side_by_side=lambda: 2)
    monkeypatch.setattr("evalgate.engines.get_engine", lambda name, options: engine)

    def run_stage(cfg, st):
        scheduled.log.append(("run", st))
        (tmp_path / "results" / "baseline").mkdir(parents=True)
        (tmp_path / "results" / "baseline" / "status.json").write_text(
            json.dumps({"ok": False, "transient": "timeout", "error": "worker timed out"}))
        return 75

    monkeypatch.setattr(repro, "run_stage", run_stage)
    scheduled.status.update({"baseline"})
    assert repro._repro(cfg()) == repro.EX_TEMPFAIL
    assert ("run", "run@int8") not in scheduled.log and not any(c[0] == "commit" for c in scheduled.log)
    assert ("repro", "--single-item", "gate") in scheduled.log


def test_one_commit_reads_gits_index_and_each_params_file_once_and_puts_both_back(monkeypatch):
    """repro._read_once: within one commit DVC's per-output `is_tracked` reads git's index once and its
    per-dependency params reads parse each file once (each caller gets its own copy); afterwards both
    read afresh again."""
    from dvc.dependency import param

    class Index(list):
        pass

    class DulwichRepo:
        opened = 0

        def open_index(self):
            DulwichRepo.opened += 1
            return Index([b"dvc.yaml"])

    parsed = []
    monkeypatch.setattr(param, "load_path", lambda path, fs, **kw: parsed.append(path) or {"a": {"b": [1]}})
    dul = DulwichRepo()
    repo = types.SimpleNamespace(scm=types.SimpleNamespace(dulwich=types.SimpleNamespace(repo=dul)))
    with repro._read_once(repo):
        assert all(list(dul.open_index()) == [b"dvc.yaml"] for _ in range(13))
        first = param.load_path("params.yaml", None)
        first["a"]["b"].append(2)   # a caller changing its copy changes nobody else's
        assert [param.load_path("params.yaml", None) for _ in range(26)][-1] == {"a": {"b": [1]}}
        param.load_path("other.yaml", None)
    assert DulwichRepo.opened == 1 and parsed == ["params.yaml", "other.yaml"]
    dul.open_index(), param.load_path("params.yaml", None)
    assert DulwichRepo.opened == 2 and parsed[-1] == "params.yaml" and len(parsed) == 3
