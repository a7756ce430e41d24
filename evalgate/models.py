"""Where model weights come from: a local folder (the fixture) or the Hugging Face hub."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from evalgate.config import GGUF_TYPES, ConfigError, ModelSpec, Variant

MARKER = "checkpoint.json"   # what the quantize stage writes into a checkpoint folder it produced


def has_draft(model: ModelSpec) -> bool:
    """`model.draft` names a draft model: a hub id, or a local folder that holds one (the fixture's draft
    folder holds only a README when its configuration trains none: `fixture.draft` null)."""
    if not model.draft:
        return False
    path = Path(model.draft)
    return not path.is_dir() or (path / "config.json").exists()


def resolve_model(model: ModelSpec, which: str = "id") -> str:
    """Local folder or hub snapshot path for `model.id` (or `model.draft`), with a one-line error."""
    ref = getattr(model, which)
    if model.source == "local" or which == "draft" and Path(ref).exists():
        if not Path(ref).exists():
            raise ConfigError(f"model.{which}: {ref!r} does not exist")
        if not (Path(ref) / "config.json").exists():
            raise ConfigError(f"model.{which}: {ref!r} is not a model folder (no config.json there)")
        return ref
    from huggingface_hub import snapshot_download

    try:  # the real hub path: users have the hub; here it fails fast and says why
        return snapshot_download(ref, revision=model.revision,
                                 allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"])
    except Exception as e:  # noqa: BLE001 - hub errors come in many types; all mean "not available"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"model.{which}: cannot fetch {ref!r} from the Hugging Face hub "
                          f"({type(e).__name__}: {first}); offline? pre-download it or use a local path") from None


def served_gguf(model: ModelSpec, variant: Variant, checkpoint_dir: str | None, gguf_dir: str | None) -> ModelSpec:
    """For a llama.cpp engine: the GGUF files a variant serves — quantize@<variant>'s (a GGUF type), else
    the gguf stage's f16 conversion — and the draft's. Unchanged when the gguf stage converted nothing
    (another engine)."""
    info = Path(gguf_dir or "-") / "gguf.json"
    conv = json.loads(info.read_text()) if info.exists() else {}
    if not conv.get("model"):
        return model
    ck = Path(checkpoint_dir or "-") / MARKER
    own = json.loads(ck.read_text()) if ck.exists() else {}
    if own.get("format") == "gguf":
        served = str(Path(checkpoint_dir) / own["file"])
    else:
        served = str(Path(gguf_dir) / conv["model"]["file"])
    if variant.quantization["method"] in GGUF_TYPES and own.get("format") != "gguf":
        raise ConfigError(f"variants.{variant.name}.quantization.method {variant.quantization['method']!r}: no GGUF "
                          f"from quantize@{variant.name} (pass --checkpoint)")
    draft = str(Path(gguf_dir) / conv["draft"]["file"]) if conv.get("draft") else None
    return dataclasses.replace(model, gguf=served, draft_gguf=draft)


def served_model(model: ModelSpec, variant: Variant, checkpoint_dir: str | None, gguf_dir: str | None = None) -> ModelSpec:
    """The weights a variant serves: quantize@<variant>'s checkpoint, a pre-quantized checkpoint the
    variant names (`quantization: {method: checkpoint, path: …}`), or the model itself; with the GGUF
    files for a llama.cpp engine when the gguf stage converted the model (`gguf_dir`)."""
    model = served_gguf(model, variant, checkpoint_dir, gguf_dir)
    if model.gguf:
        return model
    if checkpoint_dir and (Path(checkpoint_dir) / "config.json").exists():
        return dataclasses.replace(model, source="local", id=str(checkpoint_dir))
    q = variant.quantization
    if q["method"] == "checkpoint":
        path = q.get("path")
        if not path:
            raise ConfigError(f"variants.{variant.name}.quantization.path: needed with method 'checkpoint'")
        return dataclasses.replace(model, source="local" if Path(path).exists() else "hub", id=path,
                                   revision=q.get("revision"))
    if q["method"] in ("w4a16", "w8a8"):
        raise ConfigError(f"variants.{variant.name}.quantization.method {q['method']!r}: no checkpoint from "
                          f"quantize@{variant.name} (pass --checkpoint)")
    return model
