"""Where model weights come from: a local folder (the fixture) or the Hugging Face hub."""
from __future__ import annotations

from pathlib import Path

from evalgate.config import ConfigError, ModelSpec


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
