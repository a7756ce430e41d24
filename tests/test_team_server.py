"""A team MLflow server for real: PostgreSQL (Debian's package: installed here with apt-get when its
binaries are missing) as the backend store, a folder as the artifact store, `mlflow server` in front;
then the pipeline's logging against it over HTTP — variant runs, the report's parent, the registered
winner and `evalgate check --promote` — and a look into the database and the folder to see it landed.
Skips (saying why) only where PostgreSQL is neither installed nor installable."""
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _install_postgres() -> str | None:
    """apt-get install postgresql (Debian's package); returns why not, or None when it worked."""
    if not shutil.which("apt-get"):
        return "no PostgreSQL binaries (/usr/lib/postgresql/*/bin) and no apt-get to install them"
    if os.geteuid() != 0:
        return "no PostgreSQL binaries and not root, so apt-get cannot install them (apt-get install postgresql)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"]):
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if p.returncode:
            return f"{' '.join(cmd)} failed: {p.stderr.strip()[-300:]}"
    return None


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL cluster on a free port (as user `postgres` when we are root: it refuses root)."""
    pg = _pg_bin()
    if pg is None:
        why = _install_postgres()
        pg = _pg_bin()
        if pg is None:
            print(f"SKIP team server: {why}")
            pytest.skip(why or "PostgreSQL binaries not found after installing")
    root = Path(tempfile.mkdtemp(prefix="evalgate-pg-"))
    as_user = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _port()
    subprocess.run([*as_user, str(pg / "initdb"), "-D", str(data), "-U", "evalgate", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True, timeout=120)
    subprocess.run([*as_user, str(pg / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-t", "60",
                    "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"], check=True, timeout=90)
    try:
        subprocess.run([str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "evalgate", "mlflow"],
                       check=True, timeout=60)
        yield f"postgresql://evalgate@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run([*as_user, str(pg / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    """`mlflow server` on that database and an artifact folder, as README's "A team MLflow server" starts it."""
    artifacts = tmp_path_factory.mktemp("artifacts")
    port = _port()
    log = open(artifacts.parent / "mlflow-server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", postgres,
                             "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).read() == b"OK":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                log.flush()
                raise RuntimeError("mlflow server did not come up:\n" + Path(log.name).read_text()[-3000:])
            time.sleep(1)
        print(f"mlflow server on PostgreSQL healthy after {time.time() - deadline + 120:.1f} s")
        yield {"url": url, "db": postgres, "artifacts": artifacts}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)
        log.close()


def test_the_pipeline_logs_to_a_team_server_on_postgresql(server, tmp_path, monkeypatch):
    import mlflow
    import psycopg

    from evalgate import registry, tracking
    from evalgate.check import run_check
    from evalgate.config import parse
    from evalgate.results import Results

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["mlflow"] = {"tracking_uri": server["url"], "experiment": "team", "system_metrics": False}
    cfg = parse(raw)
    g = {"baseline": "baseline", "best": "int8",
         "variants": {"baseline": {"verdict": "accept", "reason": "reference", "checks": []},
                      "int8": {"verdict": "accept", "reason": "all checks passed", "checks": []},
                      "int4": {"verdict": "reject", "reason": "too lossy", "checks": []}}}
    results = Results(tmp_path / "results")
    for name, tput in (("baseline", 100.0), ("int8", 120.0), ("int4", 150.0)):
        d = results.variant(name)
        d.reset()
        d.write_metrics({"output_throughput": tput})
        d.succeed()
        run = tracking.VariantRun.open(cfg.mlflow, cfg.raw, name, cfg.variant(name).as_params(), "team run",
                                       workload=None, tasks=["fx_add"])
        run.phase("quality")
        run.metrics({"lmeval/fx_add/exact_match/none": 1.0})
        run.close(True, d.metrics(), artifacts=d.path)
    names = list(g["variants"])
    summary = tmp_path / "summary.md"
    summary.write_text("# report\n")
    parent = tracking.log_report(cfg.mlflow, cfg.raw, "team run", names, {n: cfg.variant(n).as_params() for n in names},
                                 results, g, [{"variant": n} for n in names], [summary])
    assert parent
    version = registry.register_best(cfg, g, results, parent, tmp_path / "checkpoints")
    (tmp_path / "gate.json").write_text(json.dumps(g))
    assert run_check(cfg, tmp_path / "gate.json", tmp_path / "results", promote=True) == 0

    client = mlflow.MlflowClient(server["url"])
    assert client.get_model_version_by_alias("evalgate", "champion").version == version
    # in PostgreSQL: the runs (3 variants + the parent), their verdict tags, the registry's alias
    with psycopg.connect(server["db"]) as db, db.cursor() as cur:
        cur.execute("select count(*) from runs r join experiments e using (experiment_id) where e.name = 'team'")
        assert cur.fetchone()[0] == 4
        cur.execute("select value from tags where key = 'verdict' order by value")
        assert [r[0] for r in cur.fetchall()] == ["accept", "accept", "reject"]
        cur.execute("select alias, version from registered_model_aliases where name = 'evalgate'")
        assert cur.fetchall() == [("champion", int(version))]
    # in the artifact folder: the parent's summary, each variant's results, the served configuration
    files = {p.relative_to(server["artifacts"]).as_posix() for p in server["artifacts"].rglob("*") if p.is_file()}
    assert any(f.endswith("/artifacts/summary.md") for f in files)
    assert sum(f.endswith("/artifacts/results/metrics.json") for f in files) == 3
    served = [f for f in files if f.endswith("/artifacts/served/serve.json")]
    assert len(served) == 1 and json.loads((server["artifacts"] / served[0]).read_text())["variant"] == "int8"
