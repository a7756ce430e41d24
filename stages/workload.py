"""workload: the requests every variant is profiled with, and the fidelity reference texts, built once."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from evalgate import config
from evalgate.cli import stage_main


@stage_main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", required=True)
    ap.add_argument("--reference", required=True, help="fidelity reference texts (JSONL)")
    a = ap.parse_args(argv)
    cfg = config.load(a.params)
    if cfg.workload["source"] == "file":   # a bad user file: one line, before any model or task loads
        from evalgate.workload import read_user_file

        read_user_file(Path(cfg.workload["path"]), cfg.workload.get("format", "auto"))
    from transformers import AutoTokenizer

    from evalgate import workload
    from evalgate.evaluate import task_manager
    from evalgate.models import resolve_model

    fid = cfg.eval.get("fidelity") or {}
    tasks = cfg.workload.get("tasks") or [] if cfg.workload["source"] == "tasks" else []
    tm = task_manager(list(dict.fromkeys(tasks + fid.get("tasks", []))), cfg.eval.get("include_path"))
    tok = AutoTokenizer.from_pretrained(resolve_model(cfg.model))
    requests = workload.build(cfg.workload, cfg.load, tm, tok, cfg.seed)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in requests)
    texts = workload.build_reference(fid, tm, cfg.seed)
    with open(a.reference, "w") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
    print(f"wrote {len(requests)} requests ({cfg.workload.get('name', cfg.workload['source'])}) to {a.out}, "
          f"{len(texts)} reference texts to {a.reference}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
