"""What every stage entry point shares: offline-by-default hub settings and one-line config errors."""
from __future__ import annotations

import functools
import os
import sys

from evalgate.config import ConfigError


def stage_main(fn):
    """Run a stage's main(); a ConfigError becomes one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(argv=None):
        # lm-eval and datasets try the hub for metadata unless told otherwise; local tasks need none.
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            return fn(argv)
        except ConfigError as e:
            print(f"config error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapper
