"""Where the inputs' time goes besides training: each input stage of a preset run alone under DVC
(`dvc repro --single-item STAGE`, in order), with wall seconds per stage, and the fixture's own
`build_seconds` beside its stage's wall time (the rest is the stage's interpreter, imports, saving and
DVC's hashing). Training is cut short with overrides (e.g. `fixture.target.steps=5`): what is timed is
everything around it.

    python bench/inputs_time.py [--preset gpu] [--out F.json] [hydra overrides…]

Issue 11's ≤ 8 min with the fixture: on an H100 the inputs took 227.4 s, of which the fixture's build
was 171.2 s (docs/results/h100-2026-11-27-5).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="gpu")
    ap.add_argument("--out", type=Path)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args(argv)
    py = [sys.executable]
    subprocess.run([*py, "-m", "evalgate", "compose", f"preset={a.preset}", *a.overrides], check=True)
    variants = list(yaml.safe_load(Path("params.yaml").read_text())["variants"])
    stages = ["fixture", "workload", "gguf", *[f"quantize@{v}" for v in variants]]
    out: dict = {"stages_s": {}}
    for st in stages:
        t = time.time()
        subprocess.run([*py, "-m", "dvc", "repro", "--force", "--single-item", st], check=True,
                       stdout=subprocess.DEVNULL)
        out["stages_s"][st] = round(time.time() - t, 1)
        print(f"{st}: {out['stages_s'][st]} s", flush=True)
    metrics = json.loads(Path("fixtures/metrics.json").read_text())
    out["fixture_build_s"] = metrics.get("build_seconds")
    out["total_s"] = round(sum(out["stages_s"].values()), 1)
    t = time.time()
    subprocess.run([*py, "-c", "import evalgate.cli"], check=True)
    out["import_evalgate_cli_s"] = round(time.time() - t, 1)
    print(json.dumps(out, indent=1))
    if a.out:
        a.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
