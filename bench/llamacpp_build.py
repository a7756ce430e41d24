"""Two llama.cpp builds side by side on the same GGUFs: does a build's compile setting cost speed?
Per build: llama-bench (pp128, tg128) and llama-server's own load (the llamacpp engine's streaming
client, output tok/s at concurrency 1 and 4), on the CPU fixture's shape and on one 20× larger; rounds
alternate the builds (A B A B…) so a drift of this shared machine's load hits both alike.

usage: python bench/llamacpp_build.py --old ROOT [--new ROOT] [--rounds 3] [--out FILE]
  ROOT: a build folder (~/.cache/evalgate/llama.cpp/<version>-<key>); --new defaults to this checkout's build.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

SHAPES = {   # the CPU fixture's target (conf/fixture/cpu.yaml) and a larger model, where compute dominates
    "fixture": {"hidden_size": 128, "num_layers": 3, "num_heads": 4, "intermediate_size": 512,
                "max_position_embeddings": 256},
    "larger": {"hidden_size": 512, "num_layers": 8, "num_heads": 8, "intermediate_size": 1536,
               "max_position_embeddings": 256},
}


def models(work: Path, tl) -> dict[str, Path]:
    """Random-weight Llamas of each shape with a fixture-style tokenizer, converted to GGUF F16."""
    import torch

    from evalgate import gguf
    from evalgate.toymodel.corpus import Corpus
    from evalgate.toymodel.tokenizer import train_tokenizer
    from evalgate.toymodel.train import new_model

    corpus = Corpus(0, {"add": 4, "copy": 4, "recall": 4, "sentence": 4}, [1, 3, 1], [3, 6], [2, 4])
    tok = train_tokenizer(corpus.tokenizer_text(2000), 300)
    out = {}
    for name, shape in SHAPES.items():
        torch.manual_seed(0)
        new_model(shape, tok, name).save_pretrained(work / name)
        tok.save_pretrained(work / name)
        out[name] = work / f"{name}-f16.gguf"
        gguf.convert(work / name, out[name], tl)
    return out


def llama_bench(tl, f: Path) -> dict[str, float]:
    p = subprocess.run([tl["llama-bench"], "-m", str(f), "-p", "128", "-n", "128", "-r", "3", "-o", "json"],
                       capture_output=True, text=True, check=True)
    return {("tg128" if r.get("n_gen") else "pp128"): r["avg_ts"] for r in json.loads(p.stdout)}


def served(tl, f: Path, work: Path) -> dict[str, float]:
    """Output tok/s through llama-server at concurrency 1 and 4 (64 requests of 64 tokens each)."""
    from unittest import mock

    from evalgate import gguf
    from evalgate.config import ModelSpec, parse_variant
    from evalgate.engines import get_engine

    engine = get_engine("llamacpp", {"seed": 0, "start_timeout_s": 60,
                                     "engine_args": {"ctx_size": 1024, "parallel": 4, "cache_prompt": False}})
    model = ModelSpec(source="local", id=str(f.with_name(f.name.replace("-f16.gguf", ""))), gguf=str(f))
    reqs = [{"index": i, "source": "b", "prompt": f"{i}+{i + 7}=", "max_tokens": 64, "stop": []} for i in range(64)]
    out = {}
    with mock.patch.object(gguf, "tools", lambda *a, **k: tl):
        d = Path(tempfile.mkdtemp(dir=work))
        with engine.serve(model, parse_variant("baseline", {}), d) as ep:
            for c in (1, 4):
                recs, seconds, _ = ep.run_requests(reqs, concurrency=c, ignore_eos=True, warmup=2)
                assert all(r["ok"] for r in recs), [r.get("error") for r in recs if not r["ok"]][:1]
                out[f"served_c{c}"] = sum(r["output_tokens"] for r in recs) / seconds
    return out


def main() -> int:
    from evalgate import gguf

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True)
    ap.add_argument("--new", default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    builds = {"old": gguf.Tools(Path(a.old).expanduser()), "new": gguf.Tools(Path(a.new).expanduser() if a.new
                                                                            else gguf.home())}
    work = Path(tempfile.mkdtemp(prefix="llamacpp-build-"))
    files = models(work, builds["new"])
    runs = {b: {m: [] for m in files} for b in builds}
    for r in range(a.rounds):
        for m, f in files.items():
            for b, tl in (builds.items() if r % 2 == 0 else reversed(builds.items())):
                runs[b][m].append({**llama_bench(tl, f), **served(tl, f, work)})
                print(f"round {r + 1} {m} {b}: " + ", ".join(f"{k} {v:.0f}" for k, v in runs[b][m][-1].items()),
                      flush=True)
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "rounds": a.rounds,
              "builds": {b: {"root": str(tl.root), **{k: tl.info.get(k) for k in
                                                      ("build_seconds", "build_cpu_seconds", "cmake_flags",
                                                       "ggml_flags", "load_average")}} for b, tl in builds.items()},
              "runs": runs, "median_new_over_old": {}}
    for m in files:
        for k in runs["old"][m][0]:
            ratios = [n[k] / o[k] for n, o in zip(runs["new"][m], runs["old"][m])]
            result["median_new_over_old"][f"{m}/{k}"] = round(statistics.median(ratios), 3)
    print(json.dumps(result["median_new_over_old"], indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
