"""Compose conf/ (Hydra) into params.yaml — what `dvc exp run` does itself, for plain `dvc repro`.

DVC reads the `foreach` variant list from params.yaml before any stage runs, so a `dvc repro` after
editing conf/ needs this step first:  python -m stages.compose [hydra overrides…] && dvc repro
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from evalgate.cli import stage_main
from evalgate.config import ConfigError, parse

HEADER = "# Composed from conf/ by `python -m stages.compose` (or `dvc exp run`); edit conf/, not this file.\n"


def compose(overrides: list[str], conf_dir: Path = Path("conf")) -> dict:
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(str(conf_dir.resolve()), version_base=None):
            return OmegaConf.to_container(hydra_compose("config", overrides=overrides), resolve=True)
    except (HydraException, OmegaConfBaseException) as e:  # e.g. an unknown variant file
        raise ConfigError(f"conf: {str(e).strip().splitlines()[0]}") from None


@stage_main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. 'variant=[int8,bf16]' 'combo=[]'")
    ap.add_argument("--conf", default="conf")
    ap.add_argument("--out", default="params.yaml")
    ap.add_argument("--check", action="store_true", help="fail if --out differs from the composition")
    a = ap.parse_args(argv)
    params = compose(a.overrides, Path(a.conf))
    parse(params)  # validate before writing: a bad override never lands in params.yaml
    text = HEADER + yaml.safe_dump(params, sort_keys=False)
    if a.check:
        same = Path(a.out).exists() and yaml.safe_load(Path(a.out).read_text()) == params
        print(f"{a.out} {'matches' if same else 'differs from'} conf/")
        return 0 if same else 1
    Path(a.out).write_text(text)
    print(f"wrote {a.out}: baseline + variants {', '.join(params['variants']) or '(none)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
