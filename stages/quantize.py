"""quantize@<variant>: write the quantized checkpoint a variant serves, when it needs one.

Offline methods produce one: w4a16, w8a8 (compressed-tensors, from the HF model) and the GGUF types
(q8_0, q4_k_m, q2_k…: `llama-quantize` from the gguf stage's f16 GGUF, with an Ollama Modelfile beside
it). For every other variant this writes a one-line marker and exits without importing torch, so the
stage costs ~1 s there. DVC caches the checkpoint; `run@<variant>` serves it.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from evalgate import config
from evalgate.cli import stage_main


def gguf_checkpoint(cfg, name: str, q: dict, gguf_dir: Path, out: Path) -> dict:
    """llama-quantize the gguf stage's f16 GGUF into `out` (+ Modelfile); the checkpoint.json record."""
    from evalgate import gguf

    conv = json.loads((gguf_dir / "gguf.json").read_text()) if (gguf_dir / "gguf.json").exists() else {}
    if not conv.get("model"):
        raise RuntimeError(f"quantization.method {q['method']!r} is a GGUF type: it needs engine llamacpp "
                           f"(the gguf stage converted no model into {gguf_dir})")
    tl = gguf.tools(cfg.engine)
    file = out / f"model-{q['method']}.gguf"
    info = gguf.quantize(gguf_dir / conv["model"]["file"], file, q["method"], tl, cfg.engine.get("threads"))
    (out / "Modelfile").write_text(gguf.modelfile(file.name, ctx=gguf.trained_context(conv["model"]["source"]),
                                                  comment=[f"variant {name}: {q['method'].upper()} from "
                                                           f"{conv['model']['file']}"]))
    return {"checkpoint": True, "format": "gguf", **info}


@stage_main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--gguf", default="gguf", help="the gguf stage's output (its f16 GGUF is what GGUF types quantize)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    cfg = config.load(a.params)
    q = cfg.variant(a.variant).quantization
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if q["method"] not in config.OFFLINE_METHODS:
        (out / "checkpoint.json").write_text(json.dumps({"checkpoint": False}) + "\n")
        return 0
    from evalgate.models import resolve_model

    src = resolve_model(cfg.model)  # a missing model is a config error (exit 2)
    try:
        if q["method"] in config.GGUF_TYPES:
            info = gguf_checkpoint(cfg, a.variant, q, Path(a.gguf), out)
        else:
            from evalgate.quantize import quantize_checkpoint

            info = {"checkpoint": True, **quantize_checkpoint(src, q["method"], out, group_size=q.get("group_size"))}
    except Exception as e:  # noqa: BLE001 - recorded; run@ rejects the variant with it, others go on
        (out / "checkpoint.json").write_text(json.dumps({"checkpoint": False, "error": f"{type(e).__name__}: {e}"}) + "\n")
        print(f"quantize@{a.variant}: failed: {type(e).__name__}: {e}")
        return 0
    (out / "checkpoint.json").write_text(json.dumps(info) + "\n")
    print(f"quantize@{a.variant}: {info}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
