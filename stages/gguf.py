"""gguf: the model (and its draft) as GGUF f16 for the `llamacpp` engine, with an Ollama Modelfile.

With engine llamacpp: builds llama.cpp's tools first if this machine has none (evalgate.gguf: once per
machine, cached outside the repository), converts the HF checkpoint with llama.cpp's own
convert_hf_to_gguf.py and writes `gguf.json` (files, sizes, tensor types, the build). quantize@<variant>
turns the f16 file into a GGUF type; run@ serves one or the other. A model whose tokenizer the converter
does not know stops here with one line naming the fix (exit 2). With any other engine: a marker, ~1 s.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from evalgate import config
from evalgate.cli import stage_main


@stage_main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    cfg = config.load(a.params)
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if cfg.engine["name"] != "llamacpp":
        (out / "gguf.json").write_text(json.dumps({"model": None, "engine": cfg.engine["name"]}) + "\n")
        return 0
    from evalgate import gguf
    from evalgate.models import resolve_model

    tl = gguf.tools(cfg.engine)                 # built once per machine (≈10 min on 2 cores), then cached
    info = {"engine": "llamacpp", "build": {"root": str(tl.root), **tl.info}}
    for which, name in (("id", "model"), ("draft", "draft")):
        if which == "draft" and not cfg.model.draft:
            continue
        src = resolve_model(cfg.model, which)   # a missing model is a config error (exit 2)
        try:
            conv = gguf.convert(src, out / f"{name}-f16.gguf", tl, "f16")
        except gguf.ConversionError as e:
            raise config.ConfigError(str(e)) from None
        info[name] = {**conv, **gguf.tensor_types(out / conv["file"], tl), "source": src}
    (out / "Modelfile").write_text(gguf.modelfile(info["model"]["file"], ctx=gguf.trained_context(info["model"]["source"]),
                                                  comment=[f"{cfg.model.id} converted to GGUF F16 by "
                                                           "llama.cpp's convert_hf_to_gguf.py"]))
    (out / "gguf.json").write_text(json.dumps(info, indent=1) + "\n")
    files = [f"{k} {v['file']} ({v['bytes'] / 2**20:.1f} MiB)" for k, v in info.items() if k in ("model", "draft")]
    print(f"gguf: {', '.join(files)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
