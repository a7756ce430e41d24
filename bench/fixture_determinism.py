"""Is the fixture's training bit-reproducible on this machine, and what does determinism cost?

GPU training is not bit-reproducible by default (atomics in attention's and the embedding's backward,
cuBLAS workspaces), so two machines train two different GPU fixtures and the quantized variants' verdicts
can differ between them (docs/results/h100-2026-11-27-12). This trains the target `--steps` steps
`--repeat` times in this process, each from the same seed and stream, and prints each run's seconds per
step and a hash of its weights. `--deterministic` turns on torch's deterministic algorithms (warn-only)
with `CUBLAS_WORKSPACE_CONFIG=:4096:8`, as PyTorch's reproducibility notes say, before CUDA starts;
`--strict` without warn-only (an op with no deterministic kernel raises, naming itself). On an H100
(2026-11-27) warn-only left FlashAttention's backward non-deterministic: torch enables its deterministic
kernel only in strict mode.

    python bench/fixture_determinism.py [--deterministic [--strict]] [--steps 20] [--repeat 2] [--out F.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixture", default=str(ROOT / "conf/fixture/gpu.yaml"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--deterministic", action="store_true")
    ap.add_argument("--strict", action="store_true", help="with --deterministic: not warn-only")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    if a.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

    import torch
    import yaml
    from common import cut_short  # bench/common.py (these scripts run as `python bench/X.py`)

    from evalgate.toymodel import corpus_and_tokenizer
    from evalgate.toymodel.train import new_model, resolve_bf16, resolve_device, train

    if a.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=not a.strict)
    cfg = yaml.safe_load(open(a.fixture))
    device = resolve_device(cfg["device"])
    bf16 = resolve_bf16(cfg["bf16"], device)
    corpus, tok = corpus_and_tokenizer(cfg)
    mcfg = cut_short(cfg["target"], a.steps)
    runs = []
    for i in range(a.repeat):
        torch.manual_seed(cfg["seed"])
        model = new_model(mcfg, tok, "target")
        t = time.perf_counter()
        train(model, corpus.stream(mcfg["mix"], "target"), tok, mcfg, device, bf16, cfg["attn_implementation"], "target")
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t
        h = hashlib.sha256()
        for name, p in sorted(model.state_dict().items()):
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
        runs.append({"run": i, "s_per_step": round(wall / a.steps, 4), "weights_sha256": h.hexdigest()[:16]})
        print(json.dumps(runs[-1]), flush=True)
        del model
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "deterministic": a.deterministic, "strict": a.deterministic and a.strict, "steps": a.steps,
        "attn": cfg["attn_implementation"],
        "identical": len({r["weights_sha256"] for r in runs}) == 1, "runs": runs,
    }
    print(json.dumps(result))
    if a.out:
        a.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
