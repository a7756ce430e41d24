"""run@<variant>: serve one variant once, then the quality checks and the load profile through that
same endpoint (evalgate.runner). The scheduler (stages/schedule.py) runs the same phases for several
variants side by side; this stage is the serial path, and what `dvc repro` alone runs.

Bad config → one line, exit 2, before any model loads. A variant the engine cannot run, or one that
fails while running, is recorded in status.json (and rejected by the gate) and the stage exits 0, so
the other variants still run and nothing already produced is lost.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from evalgate import config
from evalgate.cli import stage_main


@stage_main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--workload", required=True)
    ap.add_argument("--reference", required=True, help="fidelity reference texts (JSONL)")
    ap.add_argument("--checkpoint", help="quantize@<variant>'s output: served instead of the model if it holds one")
    ap.add_argument("--baseline", help="the baseline stage's results: fidelity and the sequential looks compare "
                    "against them, and a clearly worse variant stops early")
    ap.add_argument("--gguf", help="the gguf stage's output: the GGUF files a llama.cpp engine serves")
    ap.add_argument("--out", required=True)
    ap.add_argument("--attach", help="(scheduler) a running server's record (JSON): run only the quality phase on it")
    a = ap.parse_args(argv)
    cfg = config.load(a.params)
    from evalgate import runner
    from evalgate.engines import get_engine

    engine = get_engine(cfg.engine["name"], cfg.engine)
    if a.attach:
        return runner.attached_quality(cfg, a.variant, Path(a.out), Path(a.workload), Path(a.reference),
                                       Path(a.baseline) if a.baseline else None, engine, Path(a.attach))
    job = runner.prepare(cfg, a.variant, Path(a.out), Path(a.workload), Path(a.reference), a.checkpoint,
                         Path(a.baseline) if a.baseline else None, engine, a.gguf)
    return 0 if job is None else runner.run_serial(job, engine)


if __name__ == "__main__":
    raise SystemExit(main())
