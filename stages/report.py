"""report: markdown summary + quality-vs-throughput PNG (DVC outputs), then the MLflow runs."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from evalgate import config
from evalgate.cli import stage_main
from evalgate.gate import load_result


@stage_main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--results", required=True)
    ap.add_argument("--gate", required=True)
    ap.add_argument("--out", required=True, help="report folder")
    a = ap.parse_args(argv)
    cfg = config.load(a.params)
    from evalgate import report, tracking

    dirs = {n: Path(a.results) / n for n in cfg.variants}
    results = {n: load_result(d) for n, d in dirs.items()}
    gate = json.loads(Path(a.gate).read_text())
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    table = report.rows(cfg, results, gate)
    phases = {n: {k.removeprefix("time/"): v for k, v in r["metrics"].items() if k.startswith("time/")}
              for n, r in results.items() if r["status"].get("ok")}
    (out / "summary.md").write_text(report.markdown(cfg, table, gate, phases))
    (out / "variants.json").write_text(json.dumps(table, indent=1))   # rows for `dvc plots`
    (out / "metrics.json").write_text(json.dumps({n: r["metrics"] for n, r in results.items()}, indent=1))
    report.pareto_png(cfg, table, out / "pareto.png")
    print((out / "summary.md").read_text())
    tracking.log_sweep(cfg, results, dirs, gate, [out / "summary.md", out / "pareto.png", Path(a.gate), Path(a.params)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
