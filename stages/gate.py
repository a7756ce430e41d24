"""gate: a verdict (accept/reject, with its reason) for every variant against the baseline."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from evalgate import config
from evalgate.cli import stage_main
from evalgate.config import BASELINE
from evalgate.gate import add_fidelity, decide, load_result


@stage_main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--results", required=True, help="folder holding one results folder per variant")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    cfg = config.load(a.params)
    results = {n: load_result(Path(a.results) / n) for n in cfg.variants}
    add_fidelity(results, BASELINE)
    gate = decide(cfg, results)
    gate["fidelity"] = {n: {k: v for k, v in r["metrics"].items() if k.startswith("fidelity/")}
                        for n, r in results.items()}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(gate, indent=1))
    for name, v in gate["variants"].items():
        print(f"gate: {name}: {v['verdict']}: {v['reason']}")
    print(f"gate: best accepted variant: {gate['best']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
