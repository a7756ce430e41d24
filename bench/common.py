"""What the benches share: a fresh clone of the committed state to time, with this interpreter (CPU); servers
of the baseline on the pipeline's own fixture and workload (GPU); a fixture model's training cut short."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cut_short(model_cfg: dict, steps: int) -> dict:
    """A fixture model's training section cut to `steps` steps, its warm-up at most a quarter of them (the
    decay still runs): what the fixture benches train so that a measurement fits a GPU lease."""
    return dict(model_cfg, steps=steps, warmup_steps=min(model_cfg["warmup_steps"], steps // 4))


def fresh_clone(keep: str | None, prefix: str, rev: str | None = None) -> tuple[Path, dict]:
    """`git clone` of this repository (at `rev`, default its HEAD) into `keep` (emptied first) or a new temp
    folder, and the environment to run it with: this interpreter's bin first on PATH, the hub offline,
    MLflow's default store (no inherited tracking URI)."""
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix=prefix))
    if work.exists() and any(work.iterdir()):
        shutil.rmtree(work)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(work)], check=True)
    if rev:
        subprocess.run(["git", "checkout", "-q", rev], cwd=work, check=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return work, env


def physical_cores(cpus=None, sysfs: Path = Path("/sys/devices/system/cpu")) -> list[list[int]]:
    """The CPUs this process may run on (or `cpus`) grouped by physical core (SMT siblings together, from
    sysfs's topology: package and core id), ordered by their first CPU; a CPU sysfs says nothing of is a
    core of its own."""
    groups: dict[tuple, list[int]] = {}
    for c in sorted(os.sched_getaffinity(0) if cpus is None else cpus):
        topo = sysfs / f"cpu{c}" / "topology"
        try:
            key: tuple = (int((topo / "physical_package_id").read_text()), int((topo / "core_id").read_text()))
        except (OSError, ValueError):
            key = ("cpu", c)
        groups.setdefault(key, []).append(c)
    return sorted(groups.values(), key=lambda g: g[0])


def pin_plan(cores: list[list[int]], server: int = 2, client: int = 1) -> dict[str, list[int]]:
    """Which CPUs the profiled server, the client and the rest (the neighbours) run on: the server the
    last `server` physical cores, the client the `client` before them, the rest the others. Whole cores
    (every SMT sibling), so no busy thread of the profile shares a core with another's thread."""
    if len(cores) < server + client + 1:
        raise SystemExit(f"--pin: needs {server + client + 1} physical cores (server {server}, client {client}, "
                         f"one for the rest); this process may use {len(cores)}: {cores}")
    flat = lambda groups: sorted(c for g in groups for c in g)   # noqa: E731
    return {"server": flat(cores[-server:]), "client": flat(cores[-server - client:-server]),
            "rest": flat(cores[:-server - client])}


def pin_threads(pids, cpus) -> int:
    """Every thread of these processes onto `cpus`, and how many threads that was. One thread at a time:
    sched_setaffinity sets one thread's mask (a process's other threads keep theirs), and a thread started
    later inherits the mask of the thread that starts it."""
    n = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(ProcessLookupError):
                    os.sched_setaffinity(int(tid), cpus)
                    n += 1
    return n


def baseline_share(engine, model, variant, shared_by: int) -> dict:
    """The memory share of one baseline server among `shared_by` (a scheduled run's split)."""
    from evalgate.schedule import memory_shares

    need = engine.memory_need(model, variant)
    free_total = engine.device_memory()
    total = free_total[1] if free_total else 80 * 2**30
    return memory_shares({f"s{i}": need for i in range(shared_by)}, total)["s0"]


@contextlib.contextmanager
def baseline_servers(params: str, n: int, shared_by: int, prefix: str):
    """`n` servers of the baseline, each with the memory share of one among `shared_by`, their memory
    samplers stopped (nothing of ours polls the driver unless the bench says so), stopped on leaving.
    Yields (config, engine, the workload's requests, servers, endpoints). Run from the pipeline's working
    copy on the GPU host: params.yaml, fixtures/model, data/workload.jsonl."""
    sys.path.insert(0, str(ROOT))
    from evalgate.compose import load
    from evalgate.engines import get_engine

    cfg = load(Path(params))
    engine = get_engine(cfg.engine["name"], cfg.engine)
    variant, model = cfg.variant("baseline"), cfg.model
    requests = [json.loads(line) for line in open("data/workload.jsonl")]
    share = baseline_share(engine, model, variant, shared_by)
    work = Path(tempfile.mkdtemp(prefix=prefix))
    servers = []
    try:
        for i in range(n):
            d = work / f"s{i}"
            d.mkdir()
            servers.append(engine.start(model, variant, d, share))
        endpoints = [s.wait() for s in servers]
        for s in servers:
            s.sampler.stop()
        yield cfg, engine, requests, servers, endpoints
    finally:
        for s in servers:
            s.stop()
