"""conf/ (Hydra) → params.yaml, and the checks every params.yaml passes before a stage uses it.

DVC composes conf/ itself for `dvc exp run -S …`; for a plain `dvc repro` after editing conf/,
`evalgate compose [overrides…]` writes params.yaml first (DVC reads the `foreach` variant list from it
before any stage runs).

A variant's name is its file name: `conf/variant/int8.yaml` is the variant `int8`. Hydra places each
file by the package line it carries (`# @package variants.int8`), so that line must name the file's
own stem; a copied file that still names the old variant would silently merge into it, so it is an
error here (checked by `evalgate compose` and, for `dvc exp run`, by every stage that reads params).
A combination (`conf/combo/<name>.yaml`) names itself the same way in its defaults line.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from evalgate.config import Config, ConfigError, parse

HEADER = "# Composed from conf/ by `evalgate compose` (or `dvc exp run`); edit conf/, not this file.\n"
VARIANT_PACKAGE = re.compile(r"^#\s*@package\s+(\S+)\s*$", re.M)
COMBO_TARGET = re.compile(r"^\s*-\s*/variant@(\S+?)\s*:", re.M)


def compose(overrides: list[str], conf_dir: Path = Path("conf")) -> dict:
    """The composed params (what `dvc exp run` would write), after the file-name check."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    check_variant_files(conf_dir)
    try:
        with initialize_config_dir(str(conf_dir.resolve()), version_base=None):
            return OmegaConf.to_container(hydra_compose("config", overrides=overrides), resolve=True)
    except (HydraException, OmegaConfBaseException) as e:  # e.g. an unknown variant file
        raise ConfigError(f"conf: {str(e).strip().splitlines()[0]}") from None


def check_variant_files(conf_dir: Path = Path("conf")) -> None:
    """Every variant and combination file places itself under `variants.<its file name>`."""
    for f in sorted((conf_dir / "variant").glob("*.yaml")):
        m = VARIANT_PACKAGE.search(f.read_text())
        want = f"variants.{f.stem}"
        if not m or m.group(1) != want:
            found = f"says '# @package {m.group(1)}'" if m else "has no '# @package' line"
            raise ConfigError(
                f"{f}: a variant's name is its file name, but the file {found}; write '# @package {want}' (or rename the file)"
            )
    for f in sorted((conf_dir / "combo").glob("*.yaml")):
        targets = set(COMBO_TARGET.findall(f.read_text()))
        want = f"variants.{f.stem}"
        if targets != {want}:
            raise ConfigError(
                f"{f}: a combination's name is its file name, but its defaults line places it at "
                f"{', '.join(sorted(targets)) or 'nothing'}; write '- /variant@{want}: [...]'"
            )


def validate(raw: dict, conf_dir: Path | None = Path("conf")) -> Config:
    """Everything a params dict must pass before a stage uses it: the schema (evalgate.config), a
    registered engine (evalgate.engines), and variant files named as their variants (when `conf_dir`
    exists: a params.yaml can also be used without its conf/)."""
    from evalgate.engines import check_name

    cfg = parse(raw)
    check_name(cfg.engine["name"])
    if conf_dir is not None and conf_dir.is_dir():
        check_variant_files(conf_dir)
    return cfg


def load(path: str | Path = "params.yaml", conf_dir: Path | None = Path("conf")) -> Config:
    """params.yaml, validated (a ConfigError naming the key, before any model loads)."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: not found (compose it with `evalgate compose`)")
    return validate(yaml.safe_load(p.read_text()) or {}, conf_dir)


def write(params: dict, out: Path) -> None:
    out.write_text(HEADER + yaml.safe_dump(params, sort_keys=False))


def matches(params: dict, out: Path) -> bool:
    """Whether `out` holds exactly this composition."""
    return out.exists() and yaml.safe_load(out.read_text()) == params
