"""What the CPU benches share: a fresh clone of the committed state to time, with this interpreter."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fresh_clone(keep: str | None, prefix: str) -> tuple[Path, dict]:
    """`git clone` of this repository into `keep` (emptied first) or a new temp folder, and the
    environment to run it with: this interpreter's bin first on PATH, the hub offline, MLflow's default
    store (no inherited tracking URI)."""
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix=prefix))
    if work.exists() and any(work.iterdir()):
        shutil.rmtree(work)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(work)], check=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return work, env
