"""`python -m evalgate …`: the `evalgate` command without installing the package (the GPU host), and what
every dvc.yaml stage runs.

DVC runs a stage's command with whatever `python` comes first on PATH, not the interpreter DVC itself
runs under: `.venv/bin/dvc repro` from a fresh shell would run the stages with the system python
(`ModuleNotFoundError: No module named 'transformers'`). So, before anything else, an interpreter that
lacks the requirements hands over to the project's own `.venv/bin/python` (beside dvc.yaml: DVC_ROOT, or
the working folder), saying so in one line; without one it is one line saying what to do, exit 2.
"""

import importlib.util
import os
import sys
from pathlib import Path

NEEDED = ("typer", "yaml", "pydantic", "hydra", "psutil", "torch", "transformers", "lm_eval", "mlflow")


def _hand_over() -> None:
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if not missing:
        return
    root = Path(os.environ.get("DVC_ROOT") or Path.cwd())
    venv = root / ".venv"
    python = venv / "bin" / "python"
    here = Path(sys.prefix).resolve()
    if python.exists() and here != venv.resolve() and not os.environ.get("EVALGATE_HANDED_OVER"):
        print(
            f"evalgate: {sys.executable} lacks {', '.join(missing)}; running the project's {python} instead",
            file=sys.stderr,
            flush=True,
        )
        os.environ["EVALGATE_HANDED_OVER"] = "1"
        os.execv(str(python), [str(python), "-m", "evalgate", *sys.argv[1:]])
    print(
        f"evalgate: {sys.executable} lacks {', '.join(missing)}: run `make repro` once (it creates .venv), then "
        f"`source .venv/bin/activate` or call .venv/bin/evalgate",
        file=sys.stderr,
    )
    raise SystemExit(2)


if __name__ == "__main__":
    _hand_over()
    from evalgate.cli import main

    main()
