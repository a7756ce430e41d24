"""fixture: train the fixture target + draft models and write the lm-eval tasks (no model hub here)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from evalgate.cli import stage_main
from evalgate.config import ConfigError


@stage_main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    import yaml

    raw = yaml.safe_load(Path(a.params).read_text()) or {}
    if not isinstance(raw.get("fixture"), dict):
        raise ConfigError("fixture: missing from params")  # the fixture needs no other section
    fx = raw["fixture"]
    if fx.get("device", "auto") not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"fixture.device: {fx['device']!r} is not one of auto, cpu, cuda")
    if fx.get("bf16", "auto") not in ("auto", True, False):
        raise ConfigError(f"fixture.bf16: {fx['bf16']!r} is not one of auto, true, false")
    from evalgate.toymodel import build

    try:
        metrics = build(raw["fixture"], Path(a.out))
    except KeyError as e:
        raise ConfigError(str(e).strip("'\"")) from None
    print(json.dumps(metrics, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
