"""quantize@<variant>: write the quantized checkpoint a variant serves, when it needs one.

Only offline methods (w4a16, w8a8: compressed-tensors) produce a checkpoint; for every other variant
this writes a one-line marker and exits without importing torch, so the stage costs ~1 s there.
DVC caches the checkpoint; `run@<variant>` serves it.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from evalgate import config
from evalgate.cli import stage_main

OFFLINE = ("w4a16", "w8a8")


@stage_main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    cfg = config.load(a.params)
    q = cfg.variant(a.variant).quantization
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if q["method"] not in OFFLINE:
        (out / "checkpoint.json").write_text(json.dumps({"checkpoint": False}) + "\n")
        return 0
    from evalgate.models import resolve_model
    from evalgate.quantize import quantize_checkpoint

    src = resolve_model(cfg.model)  # a missing model is a config error (exit 2)
    try:
        info = quantize_checkpoint(src, q["method"], out, group_size=q.get("group_size"))
    except Exception as e:  # noqa: BLE001 - recorded; run@ rejects the variant with it, others go on
        (out / "checkpoint.json").write_text(json.dumps({"checkpoint": False, "error": f"{type(e).__name__}: {e}"}) + "\n")
        print(f"quantize@{a.variant}: failed: {type(e).__name__}: {e}")
        return 0
    (out / "checkpoint.json").write_text(json.dumps({"checkpoint": True, **info}) + "\n")
    print(f"quantize@{a.variant}: {info}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
