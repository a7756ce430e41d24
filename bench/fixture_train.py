"""Where a fixture training step's time goes: seconds per step, and what the accelerator spends it on.

The GPU fixture's training is ≈ 170 s of the ≈ 535 s a first GPU run takes to its verdict (issue 11's
8-minute goal), the CPU fixture's ≈ 330–450 s of the CPU default. This trains `--steps` steps of the
target (or draft) exactly as the `fixture` stage does (`evalgate.toymodel.train.train`: same model, same
packed batches, same optimizer), then profiles `--profile-steps` more with torch.profiler and prints the
top operators by device time and the share of wall time the device was busy: a step bound by Python (the
batch builder, kernel launches) shows a low busy share, one bound by attention shows its kernels on top.

    python bench/fixture_train.py [--fixture conf/fixture/gpu.yaml] [--model target] [--steps 60]
        [--attn sdpa|varlen|eager] [--optimizer fused|foreach] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixture", default=str(ROOT / "conf/fixture/gpu.yaml"))
    ap.add_argument("--model", choices=("target", "draft"), default="target")
    ap.add_argument("--steps", type=int, default=60, help="timed steps (the first few include warm-up)")
    ap.add_argument("--profile-steps", type=int, default=8)
    ap.add_argument("--attn", help="attention for training (default: the fixture's attn_implementation)")
    ap.add_argument("--optimizer", choices=("default", "fused", "foreach"), default="default",
                    help="AdamW's kernels (default: fused on CUDA, as the fixture stage)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)

    import torch
    import yaml
    from torch.profiler import ProfilerActivity, profile

    from evalgate.toymodel import corpus_and_tokenizer
    from evalgate.toymodel.train import new_model, resolve_bf16, resolve_device, train

    cfg = yaml.safe_load(open(a.fixture))
    device = resolve_device(cfg["device"])
    bf16 = resolve_bf16(cfg["bf16"], device)
    corpus, tok = corpus_and_tokenizer(cfg)
    mcfg = dict(cfg[a.model], steps=a.steps)
    attn = a.attn or cfg["attn_implementation"]
    fused = {"default": None, "fused": True, "foreach": False}[a.optimizer]
    torch.manual_seed(cfg["seed"])
    model = new_model(mcfg, tok, a.model)
    stream = corpus.stream(mcfg["mix"], a.model)
    wall = train(model, stream, tok, mcfg, device, bf16, attn, a.model, fused)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        t = time.perf_counter()
        train(model, stream, tok, dict(mcfg, steps=a.profile_steps), device, bf16, attn, a.model, fused)
        if device.type == "cuda":
            torch.cuda.synchronize()
        prof_wall = time.perf_counter() - t
    events = prof.key_averages()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    top = sorted(events, key=lambda e: getattr(e, key, 0) or 0, reverse=True)
    busy_us = sum(getattr(e, key, 0) or 0 for e in events if device.type != "cuda" or e.device_type.name == "CUDA")
    rows = [
        {
            "op": e.key[:70],
            "ms_per_step": round((getattr(e, key, 0) or 0) / 1e3 / a.profile_steps, 2),
            "calls_per_step": round(e.count / a.profile_steps, 1),
        }
        for e in top[:20]
    ]
    tokens = mcfg["batch_size"] * mcfg["seq_len"]
    result = {
        "fixture": a.fixture,
        "model": a.model,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "bf16": bf16,
        "attn": attn,
        "optimizer": a.optimizer,
        "steps": a.steps,
        "s_per_step": round(wall / a.steps, 4),
        "tokens_per_step": tokens,
        "profiled_s_per_step": round(prof_wall / a.profile_steps, 4),
        "device_busy_share": round(busy_us / 1e6 / prof_wall, 3) if device.type == "cuda" else None,
        "top_ops": rows,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "top_ops"}))
    for r in rows:
        print(f"  {r['ms_per_step']:9.2f} ms/step  {r['calls_per_step']:7.1f} calls  {r['op']}")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
