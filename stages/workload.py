"""Build the profile workload once, so every variant is timed on the same requests."""
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
    a = ap.parse_args(argv)
    cfg = config.load(a.params)
    from transformers import AutoTokenizer

    from evalgate.models import resolve_model
    from evalgate.evaluate import task_manager
    from evalgate.profile import build_workload

    tasks = cfg.workload.get("tasks") or []
    tm = task_manager(tasks, cfg.eval.get("include_path")) if tasks else None
    tok = AutoTokenizer.from_pretrained(resolve_model(cfg.model))
    prompts = build_workload(cfg.workload, tm, tok, cfg.seed)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "w") as f:
        f.writelines(json.dumps(p) + "\n" for p in prompts)
    print(f"wrote {len(prompts)} prompts to {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
