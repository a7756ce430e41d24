"""Offline weight quantization into a compressed-tensors checkpoint that vLLM (and transformers) load
(the GGUF types go to llama.cpp's own llama-quantize: evalgate.gguf).

Round-to-nearest with min/max scales per output channel (W8A8: int8 weights, dynamic per-token int8
activations) or per group (W4A16: int4 weights in groups of 128, packed). This is what llm-compressor's
`QuantizationModifier` does for these schemes without calibration data; it is written here against
compressed-tensors directly because llm-compressor 0.14 pins compressed-tensors 0.19 and
transformers ≤ 5.17, while vLLM 0.24 pins compressed-tensors 0.17 — the two do not install together.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from evalgate.models import MARKER

SCHEMES = {"w4a16": ("W4A16", "pack-quantized"), "w8a8": ("W8A8", "int-quantized")}
OFFLINE = tuple(SCHEMES)   # the methods that need a checkpoint written before the variant is served


def quantize_variant(name: str, quantization: dict, model, out: Path, gguf_dir: Path | None = None,
                     engine_options: dict | None = None) -> dict:
    """The `quantize VARIANT` stage: the variant's checkpoint in `out` when its method is offline
    (compressed-tensors from the HF model; a GGUF type by llama-quantize from the gguf stage's F16 file
    in `gguf_dir`), else a one-line marker (written without importing torch: ~1 s). A failed
    quantization is recorded in the marker, and the variant's run rejects it with that error; the
    other variants go on."""
    from evalgate.config import GGUF_TYPES, OFFLINE_QUANT

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    method = quantization["method"]
    if method not in OFFLINE_QUANT:
        info = {"checkpoint": False}
    else:
        from evalgate.models import resolve_model

        src = resolve_model(model)  # a missing model is a config error (exit 2)
        try:
            if method in GGUF_TYPES:
                from evalgate.gguf import gguf_checkpoint

                info = gguf_checkpoint(Path(gguf_dir or "gguf"), method, out, engine_options or {}, name)
            else:
                info = quantize_checkpoint(src, method, out, group_size=quantization.get("group_size"))
            info = {"checkpoint": True, **info}
        except Exception as e:  # noqa: BLE001 - recorded; the variant's run rejects it with this, others go on
            info = {"checkpoint": False, "error": f"{type(e).__name__}: {e}"}
    (out / MARKER).write_text(json.dumps(info) + "\n")
    return info


def checkpoint_error(checkpoint: str | Path | None) -> str | None:
    """The error `quantize VARIANT` recorded for this checkpoint folder, if any."""
    marker = Path(checkpoint or "-") / MARKER
    return json.loads(marker.read_text()).get("error") if marker.exists() else None


def preload() -> None:
    """Imports what `quantize_checkpoint` needs (torch, compressed-tensors, transformers' auto classes: 6.6 s
    in a fresh interpreter on the 2-core CPU, 2026-11-28), so a caller can pay that while it waits for the
    model (evalgate.repro)."""
    import torch  # noqa: F401
    from compressed_tensors.compressors import ModelCompressor  # noqa: F401
    from compressed_tensors.quantization import QuantizationConfig  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401


def _weight_qparams(w, args):
    """Scale and zero point of one weight matrix for its strategy (the min/max observer)."""
    from compressed_tensors.quantization.utils.helpers import calculate_qparams

    if args.strategy == "group":
        v = w.reshape(w.shape[0], -1, args.group_size)
        lo, hi = v.amin(-1), v.amax(-1)
    elif args.strategy == "channel":
        lo, hi = w.amin(1, keepdim=True), w.amax(1, keepdim=True)
    else:
        lo, hi = w.amin().reshape(1), w.amax().reshape(1)
    return calculate_qparams(lo, hi, args)


def quantize_checkpoint(src: str, method: str, out: Path, group_size: int | None = None,
                        ignore: tuple[str, ...] = ("lm_head",)) -> dict:
    """Load `src`, quantize its Linear weights with `method` (w4a16 | w8a8), save to `out`. Prints where its
    time went (on a GPU host it is on the path of the last server to start, that of the checkpoint)."""
    import time

    t = [time.perf_counter()]
    import torch
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config, preset_name_to_scheme
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evalgate.progress import bar

    t.append(time.perf_counter())
    preset, fmt = SCHEMES[method]
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16 if torch.cuda.is_available() else "auto")
    scheme = preset_name_to_scheme(preset, ["Linear"])
    if group_size and scheme.weights.group_size:
        scheme.weights.group_size = group_size
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": scheme}, ignore=list(ignore)))
    mods = [m for m in model.modules() if getattr(getattr(m, "quantization_scheme", None), "weights", None)]
    t.append(time.perf_counter())
    with torch.no_grad():
        for m in bar(mods, desc=f"quantize {method}", unit="layer"):
            scale, zp = _weight_qparams(m.weight, m.quantization_scheme.weights)
            m.weight_scale.data.copy_(scale.reshape(m.weight_scale.shape))
            m.weight_zero_point.data.copy_(zp.reshape(m.weight_zero_point.shape))
    t.append(time.perf_counter())
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format=fmt)
    compressor.compress_model(model)
    t.append(time.perf_counter())
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    compressor.update_config(str(out))
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    t.append(time.perf_counter())
    spans = ", ".join(f"{k} {b - a:.1f} s" for k, a, b in zip(("imports", "load", "scales", "compress", "save"), t, t[1:]))
    print(f"quantize {method}: {spans}", flush=True)
    return {"method": method, "layers": len(mods), "checkpoint_mb": size / 2**20}
