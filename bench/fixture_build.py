"""The fixture stage's whole build, the draft trained after the target or beside it, in turns.

`evalgate.toymodel.build` trains the draft in a second process while the target trains on CUDA
(`draft_beside`). This times the build both ways on one machine, alternating, with the target's steps
cut by `--target-steps` so a pair fits a GPU lease (the draft keeps its steps: what it costs after the
target is what goes away), and prints each build's seconds, the two models' training seconds and the
fixture metrics. On the CPU those agree apart from the timings; on a GPU two builds differ in either order
(its training is not bit-reproducible: bench/fixture_determinism.py).

    python bench/fixture_build.py [--fixture conf/fixture/gpu.yaml] [--target-steps 150] [--rounds 1]
        [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixture", default=str(ROOT / "conf/fixture/gpu.yaml"))
    ap.add_argument("--target-steps", type=int, default=150, help="0: the fixture's own")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)

    import torch
    import yaml
    from common import cut_short  # bench/common.py (these scripts run as `python bench/X.py`)

    from evalgate.toymodel import build

    cfg = yaml.safe_load(open(a.fixture))
    if a.target_steps:
        cfg["target"] = cut_short(cfg["target"], a.target_steps)
    runs = []
    for r in range(a.rounds):
        for beside in (False, True) if r % 2 == 0 else (True, False):
            with tempfile.TemporaryDirectory() as tmp:
                m = build(cfg, Path(tmp), draft_beside=beside)
            runs.append({"round": r, "draft_beside": beside, **m})
            print(json.dumps(runs[-1]), flush=True)
    timing = ("train_seconds_target", "train_seconds_draft", "eval_seconds_target", "eval_seconds_draft", "build_seconds")
    quality = {json.dumps({k: v for k, v in run.items() if k not in (*timing, "round", "draft_beside")},
                          sort_keys=True) for run in runs}
    mean = {b: sum(r["build_seconds"] for r in runs if r["draft_beside"] == b) / a.rounds for b in (False, True)}
    result = {
        "fixture": a.fixture,
        "target_steps": cfg["target"]["steps"],
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "build_seconds_after": round(mean[False], 2),
        "build_seconds_beside": round(mean[True], 2),
        "saved_seconds": round(mean[False] - mean[True], 2),
        "same_quality_metrics": len(quality) == 1,
        "runs": runs,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    if a.out:
        a.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
