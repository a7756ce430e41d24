"""Build the profile workload and the fidelity reference texts once, so every variant sees the same."""
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
    from transformers import AutoTokenizer

    from evalgate.models import resolve_model
    from evalgate.evaluate import task_manager
    from evalgate.profile import build_reference, build_workload

    fid = cfg.eval.get("fidelity") or {}
    tasks = cfg.workload.get("tasks") or []
    tm = task_manager(list(dict.fromkeys(tasks + fid.get("tasks", []))), cfg.eval.get("include_path"))
    tok = AutoTokenizer.from_pretrained(resolve_model(cfg.model))
    prompts = build_workload(cfg.workload, tm, tok, cfg.seed)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "w") as f:
        f.writelines(json.dumps(p) + "\n" for p in prompts)
    texts = build_reference(fid, tm, cfg.seed)
    with open(a.reference, "w") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
    print(f"wrote {len(prompts)} prompts to {a.out}, {len(texts)} reference texts to {a.reference}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
