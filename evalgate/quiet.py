"""Third-party noise, filtered in one place: every stage log used to open with the same lines from
libraries the pipeline imports, which say nothing about the run. The CLI calls `quiet_third_party()`
first thing; the tests apply the same filters (tests/conftest.py). A new one goes here, with its origin.
Only these messages are dropped: anything else those libraries say still shows.
"""

from __future__ import annotations

import logging
import re
import warnings

# logger → messages dropped from it
NOISE = {
    # torchao's optional CUDA/C++ kernels (mxfp8, cutlass), absent from a CPU install
    "torchao": [r"Failed to load .*\.so"],
    # torchao registers its enums as pytree constants, which torch now handles natively
    "torch.utils._pytree": [r".* is an Enum subclass and is now natively supported by torch\.compile"],
}

# Python warnings dropped (category, message regex): MLflow's, on every variant's dataset inputs
# (evalgate.tracking._datasets), four lines a variant in a scheduled GPU run's log (2026-11-27)
WARNINGS = [
    # its registry holds LocalArtifactDatasetSource twice; either one reads a local path the same way
    (UserWarning, r"The specified dataset source can be interpreted in multiple ways"),
    # about serving a model on data with missing values; these datasets are logged, never served
    (UserWarning, r"Hint: Inferred schema contains integer column\(s\)"),
]


class _Drop(logging.Filter):
    def __init__(self, patterns: list[str]):
        super().__init__()
        self.pattern = re.compile("|".join(f"(?:{p})" for p in patterns))

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def quiet_third_party() -> None:
    for category, message in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, patterns in NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) for f in logger.filters):
            logger.addFilter(_Drop(patterns))
