"""Where model weights come from: a local folder (the fixture) or the Hugging Face hub."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from evalgate.config import ConfigError, ModelSpec, Variant


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


def served_model(model: ModelSpec, variant: Variant, checkpoint_dir: str | None) -> ModelSpec:
    """The weights a variant serves: quantize@<variant>'s checkpoint, a pre-quantized checkpoint the
    variant names (`quantization: {method: checkpoint, path: …}`), or the model itself."""
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
