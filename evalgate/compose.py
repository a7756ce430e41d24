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
    """The composed params (what `dvc exp run` would write), after the checks of conf/ itself (every file
    well-formed YAML, variant files named as their variants, no variant or combination listed twice)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    check_yaml_files(conf_dir)
    check_variant_files(conf_dir)
    check_no_duplicates(overrides, conf_dir)
    CONF_DIR[:] = [conf_dir]
    try:
        with initialize_config_dir(str(conf_dir.resolve()), version_base=None):
            return OmegaConf.to_container(hydra_compose("config", overrides=overrides), resolve=True)
    except (HydraException, OmegaConfBaseException) as e:  # e.g. an unknown variant file, a bad override
        raise ConfigError(hydra_error(e, overrides)) from None


def hydra_error(e: Exception, overrides: list[str]) -> str:
    """Hydra's message on one line, every part of it kept (its first line alone often says only
    "mismatched input '/' expecting EQUAL"), with what to write instead where we know."""
    lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
    lines = [x for x in lines if not x.startswith(("See https://hydra.cc", "Config search path", "provider="))]
    text = "; ".join(lines) or type(e).__name__
    bad = next((o for o in overrides if "/" in o.split("=", 1)[0] and o.lstrip("+~").startswith("gate.quality.")), None)
    if bad is not None:
        key, _, value = bad.partition("=")
        nested = key.replace("/", ".")
        return (
            f"conf: override {bad!r}: a Hydra override key cannot hold '/' ({text}); gate.quality's metrics "
            f"nest, so write {nested}={value}"
        )
    where = next((o for o in overrides if o.split("=", 1)[0] in text or o in text), None)
    if m := re.search(r"Could not load '([\w-]+)/([^']+)'", text):
        known = sorted(p.stem for p in (CONF_DIR[0] / m.group(1)).glob("*.yaml")) if CONF_DIR else []
        if known:
            text += f" (conf/{m.group(1)}/ has: {', '.join(known)})"
    return f"conf: {f'override {where!r}: ' if where else ''}{text}"


class _StrictLoader(yaml.SafeLoader):
    """YAML as OmegaConf reads it: a key given twice is an error, not a silent overwrite."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def check_yaml_files(conf_dir: Path = Path("conf")) -> None:
    """Every file of conf/ parses: one line naming the file, the line and the column, not a traceback."""
    for f in sorted(conf_dir.rglob("*.yaml")):
        try:
            yaml.load(f.read_text(), Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
            problem = " ".join(x for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x) or str(e)
            raise ConfigError(f"{f}{at}: not valid YAML ({' '.join(problem.split())})") from None


LIST_GROUPS = ("variant", "combo")
CONF_DIR: list[Path] = []  # the folder being composed, for the error lines  # groups whose option is a list of files


def check_no_duplicates(overrides: list[str], conf_dir: Path = Path("conf")) -> None:
    """A variant (or combination) listed twice would be run once, silently: an error instead, naming the
    group and the name. Checks the override lists and conf/config.yaml's defaults list."""
    lists: list[tuple[str, str, list]] = []
    root = conf_dir / "config.yaml"
    if root.exists():
        for item in (yaml.safe_load(root.read_text()) or {}).get("defaults", []):
            if isinstance(item, dict):
                for group, value in item.items():
                    if group in LIST_GROUPS and isinstance(value, list):
                        lists.append((f"{root} defaults", group, value))
    for o in overrides:
        key, eq, value = o.partition("=")
        group = key.lstrip("+~").removeprefix("override ").strip()
        if eq and group in LIST_GROUPS and value.strip().startswith("["):
            items = [x.strip().strip("'\"") for x in value.strip()[1:-1].split(",") if x.strip()]
            lists.append((f"override {o!r}", group, items))
    for where, group, names in lists:
        twice = [n for i, n in enumerate(names) if n in names[:i]]
        if twice:
            raise ConfigError(
                f"{group}: {where} lists {twice[0]!r} twice (each name is one variant; a copy needs "
                f"its own file in conf/{group}/)"
            )


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


_CHECKED: set[tuple] = set()  # conf/ folders found well-formed in this process, as (path, size, mtime) of each file


def validate(raw: dict, conf_dir: Path | None = Path("conf")) -> Config:
    """Everything a params dict must pass before a stage uses it: the schema (evalgate.config, which
    also checks the engine is registered), and conf/'s files well-formed and named as their variants
    (when `conf_dir` exists: a params.yaml can also be used without its conf/). conf/ is checked once per
    process while its files stay as they were: `evalgate repro` loads params.yaml three times (itself, the
    gate, the report), and parsing conf/'s ~130 files took 0.19 s a time on the 2-core CPU."""
    cfg = parse(raw)
    if conf_dir is not None and conf_dir.is_dir():
        seen = tuple((str(f), st.st_size, st.st_mtime_ns) for f in sorted(conf_dir.rglob("*.yaml")) if (st := f.stat()))
        if seen not in _CHECKED:
            check_yaml_files(conf_dir)
            check_variant_files(conf_dir)
            _CHECKED.add(seen)
    return cfg


def load(path: str | Path = "params.yaml", conf_dir: Path | None = Path("conf")) -> Config:
    """params.yaml, validated (a ConfigError naming the key, before any model loads)."""
    return validate(read_params(path), conf_dir)


def read_params(path: str | Path = "params.yaml") -> dict:
    """params.yaml as a dict, or a one-line ConfigError (missing, not YAML)."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: not found (compose it with `evalgate compose`)")
    try:
        return yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}{at}: not valid YAML ({getattr(e, 'problem', None) or e})") from None


def write(params: dict, out: Path) -> None:
    out.write_text(HEADER + yaml.safe_dump(params, sort_keys=False))


def matches(params: dict, out: Path) -> bool:
    """Whether `out` holds exactly this composition."""
    return out.exists() and yaml.safe_load(out.read_text()) == params
