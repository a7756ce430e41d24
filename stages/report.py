"""report: markdown summary and pictures (DVC outputs), then the MLflow runs."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from evalgate import config
from evalgate.cli import stage_main

HEADLINE = ("output_throughput", "request_goodput", "c1/median_e2el_per_token_ms", "median_ttft_ms", "median_tpot_ms",
            "mean_output_tokens", "mem_peak_mb")


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
    from evalgate.results import load_result

    dirs = {n: Path(a.results) / n for n in cfg.variants}
    results = {n: load_result(d) for n, d in dirs.items()}
    gate = json.loads(Path(a.gate).read_text())
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    table = report.rows(cfg, results, gate)
    phases = {n: {k.removeprefix("time/"): v for k, v in r["metrics"].items() if k.startswith("time/") and k.count("/") == 1}
              for n, r in results.items() if r["status"].get("ok")}
    (out / "summary.md").write_text(report.markdown(cfg, table, gate, results, phases))
    (out / "variants.json").write_text(json.dumps(table, indent=1))   # rows for `dvc plots`
    levels = report.level_rows(results, gate["variants"])
    (out / "levels.json").write_text(json.dumps(levels, indent=1))    # rows for the throughput/latency plot
    quality = report.quality_keys(cfg)
    (out / "metrics.json").write_text(json.dumps(   # the headline per variant: `dvc metrics show` fits a terminal
        {n: {k: r["metrics"][k] for k in (*HEADLINE, *quality) if k in r["metrics"]} for n, r in results.items()}, indent=1))
    report.pareto_png(cfg, table, out / "pareto.png")
    report.curves_png(levels, out / "curves.png")
    report.output_lengths_png(dirs, out / "output_lengths.png")
    events = report.timeline(dirs)
    report.timeline_png(events, out / "timeline.png")
    pictures = [out / "pareto.png", out / "curves.png", out / "output_lengths.png", out / "timeline.png"]
    print((out / "summary.md").read_text())
    tracking.log_sweep(cfg, results, dirs, gate, [out / "summary.md", *pictures, Path(a.gate), Path(a.params)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
