"""The results store: every read and write of `results/<variant>/`, in one place.

A variant's folder is written by its run (evalgate.runner, through the stages `evalgate run` and
`evalgate repro`) and read by the next variants' runs (the baseline's results), the gate and the
report. Nothing else opens these files. The files, one per phase so phases can run in different
processes (the scheduler's quality workers) and a failure in one keeps the rest:

  variant.json        the variant's fields (what ran)
  status.json         {"ok": true} | {"ok": false, "phase", "error"} [+ "early_rejection"]
  quality.json        the quality phase: fidelity + lm-eval metrics, phase times, early rejection
  lm_eval.json        lm-eval's results, configs and metric directions (`higher_is_better`)
  samples_<task>.jsonl  lm-eval's per-sample logs (the gate's paired tests read them)
  fidelity.npz        top-k next-token log-probs on the reference texts
  profile.json        the load sweep (profile_aa.json: the baseline's second, A/A sweep;
                      profile_alone.json: its third, with every other server stopped, when asked)
  metrics.json        every flat metric of the variant (what the gate, the report and MLflow read)
  timeline.json       the phases' start and end times
  tracking.json       the variant's MLflow run (its id), for the report and the quality worker
  server.json         (scheduler) a running server's record, for the quality worker to attach to
  unreproducible.json identical requests answered differently (a look's repeat, the gate's re-ask); after
                      faults.retry_unreproducible's second evaluation the first one's is
                      unreproducible.first.json, its samples first.samples_<task>.jsonl
  server.try<N>.log   a failed try's server log (a transient failure's retry keeps it)
  error.log           a failure's traceback
  engine files        server.log, server_cmd.json, bench.log, …: the engine's own, in the same folder

A missing or unreadable file is a failed variant with the reason, never a crash of the reader: `load()`
and `status()` turn it into {"ok": false, "error": "<file>: unreadable …"}, `samples()` and `read()`
raise a ValueError naming the file, which the gate turns into that variant's rejection.

Every write is atomic (a temporary file in the same folder, then a rename): a write that fails half way
(a full disk, a kill) leaves the previous file whole, never a truncated one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable ({type(e).__name__}: {e})") from None


@contextlib.contextmanager
def atomic(path: Path, mode: str = "w"):
    """A file written whole or not at all: a temporary file beside `path`, renamed over it on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text(path: Path, text: str) -> None:
    with atomic(path) as f:
        f.write(text)


AGAIN = ("aa", "alone")  # the baseline's further sweeps: profile_<sweep>.json, `<sweep>/<metric>` in metrics


class VariantResults:
    """One variant's folder, `results/<variant>/`."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"VariantResults({str(self.path)!r})"

    # -- generic ------------------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        """A file of this folder by name (for the engine's logs and lm-eval's request cache)."""
        return self.path / name

    def read(self, name: str) -> dict | None:
        f = self.path / name
        return _json(f) if f.exists() else None

    def write(self, name: str, obj) -> None:
        write_text(self.path / name, json.dumps(obj, indent=1, default=str))

    def reset(self) -> None:
        """An empty folder for a new run of the variant."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(parents=True)

    KEEP_ON_RETRY = ("variant.json", "tracking.json")

    def clear_phases(self) -> None:
        """A failed try's files gone (the variant's fields and its MLflow run kept) before the next try; its
        server log stays as server.try<N>.log, where a crash's cause is (an H100 run lost two of kv_fp8's
        engine-core crashes this way: docs/results/h100-2026-11-26-28)."""
        if (self.path / "server.log").is_file():
            tries = len(list(self.path.glob("server.try*.log")))
            (self.path / "server.log").rename(self.path / f"server.try{tries + 1}.log")
        for f in self.path.iterdir() if self.path.is_dir() else []:
            if f.name not in self.KEEP_ON_RETRY and f.is_file() and not f.name.startswith("server.try"):
                f.unlink()

    # the quality phase's own files (its server's log and command stay): what a second evaluation rewrites
    QUALITY_FILES = ("quality.json", "lm_eval.json", "fidelity.npz", "unreproducible.json")

    def set_aside_quality(self) -> int:
        """Before the quality phase runs again (faults.retry_unreproducible): the first evaluation's record
        of what did not reproduce is kept as unreproducible.first.json, its other files go. Returns how
        many docs changed between identical requests the first time."""
        first = self.read("unreproducible.json") or []
        self.write("unreproducible.first.json", first)
        for f in self.path.iterdir():
            if f.name.startswith("samples_") and f.is_file():  # for a reviewer: what the first evaluation said
                f.rename(f.with_name(f"first.{f.name}"))
            elif f.name in self.QUALITY_FILES:
                f.unlink()
        return changed_docs(first)

    # -- status -------------------------------------------------------------------------------------
    def status(self) -> dict:
        try:
            st = self.read("status.json")
        except ValueError as e:
            return {"ok": False, "error": str(e)}
        if st is None:
            return {"ok": False, "error": f"{self.path}/status.json missing: the variant did not run"}
        if not isinstance(st, dict) or not isinstance(st.get("ok"), bool):
            return {"ok": False, "error": f"{self.path}/status.json: unreadable (not a status record)"}
        return st

    def wait_status(self, timeout_s: float, poll_s: float = 0.25) -> dict:
        """This variant's status once it has one (its quality done and recorded, or failed): the
        scheduler runs the baseline's quality at the same time as the variants', which compare with it."""
        end = time.monotonic() + timeout_s
        while not (self.path / "status.json").exists():
            if time.monotonic() > end:
                raise TimeoutError(f"{self.path}/status.json: not written within {timeout_s:.0f} s")
            time.sleep(poll_s)
        return self.status()

    def succeed(self, early_rejection: dict | None = None) -> None:
        self.write("status.json", {"ok": True, **({"early_rejection": early_rejection} if early_rejection else {})})

    def fail(self, phase: str, error: str, traceback: str | None = None, **extra) -> None:
        if traceback:
            write_text(self.path / "error.log", traceback)
        self.write("status.json", {"ok": False, "phase": phase, "error": error[:2000], **extra})

    # -- the phases' documents ----------------------------------------------------------------------
    def metrics(self) -> dict:
        return self.read("metrics.json") or {}

    def write_metrics(self, metrics: dict) -> None:
        self.write("metrics.json", metrics)

    def quality(self) -> dict | None:
        return self.read("quality.json")

    def write_quality(self, quality: dict) -> None:
        self.write("quality.json", quality)

    def profile(self, sweep: str = "") -> dict | None:
        """The load sweep; `sweep` "aa" / "alone": the baseline's second (A/A) / third (alone) one."""
        return self.read(f"profile_{sweep}.json" if sweep else "profile.json")

    def write_profile(self, profile: dict, sweep: str = "") -> None:
        self.write(f"profile_{sweep}.json" if sweep else "profile.json", profile)

    def timeline(self) -> dict | None:
        return self.read("timeline.json")

    def write_timeline(self, name: str, events: list[dict], times: dict) -> None:
        self.write("timeline.json", {"variant": name, "events": events, "times": times})

    def tracking(self) -> dict | None:
        return self.read("tracking.json")

    def write_tracking(self, info: dict) -> None:
        self.write("tracking.json", info)

    # -- lm-eval ------------------------------------------------------------------------------------
    def lm_eval(self) -> dict | None:
        return self.read("lm_eval.json")

    def write_lm_eval(self, results: dict) -> None:
        from lm_eval.utils import handle_non_serializable

        write_text(self.path / "lm_eval.json", json.dumps(results, indent=1, default=handle_non_serializable))

    def samples(self, task: str) -> list[dict] | None:
        """lm-eval's logged samples of one task (None when the variant has none)."""
        f = self.path / f"samples_{task}.jsonl"
        if not f.exists():
            return None
        try:
            with open(f) as lines:
                return [json.loads(line) for line in lines]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{f}: unreadable ({type(e).__name__}: {e})") from None

    def write_samples(self, samples: dict[str, list[dict]]) -> None:
        from lm_eval.utils import handle_non_serializable

        self.path.mkdir(parents=True, exist_ok=True)
        for task, rows in samples.items():
            with atomic(self.path / f"samples_{task}.jsonl") as f:
                for r in sorted(rows, key=lambda r: r["doc_id"]):
                    f.write(json.dumps(r, default=handle_non_serializable) + "\n")

    def generate_tasks(self) -> list[str]:
        """The lm-eval tasks this run evaluated by generation (their answers can flip)."""
        configs = (self.lm_eval() or {}).get("configs", {})
        return [t for t, c in configs.items() if c.get("output_type") == "generate_until"]

    def answers(self, task: str) -> dict:
        """(doc_id, filter) → the filtered greedy answer, as JSON text, of one generate task."""
        return {(r["doc_id"], r.get("filter")): json.dumps(r["filtered_resps"]) for r in self.samples(task) or []}

    # -- fidelity -----------------------------------------------------------------------------------
    @property
    def fidelity_file(self) -> Path:
        return self.path / "fidelity.npz"

    # -- everything the gate and the report need, at once -------------------------------------------
    def load(self) -> dict:
        """status, flat metrics, metric directions (lm-eval's higher_is_better), and `dir`."""
        try:
            status = self.status()
            metrics = self.metrics()
            hib = {
                f"lmeval/{task}/{name}": up
                for task, m in ((self.lm_eval() or {}).get("higher_is_better") or {}).items()
                for name, up in m.items()
            }
        except ValueError as e:
            return {"status": {"ok": False, "error": str(e)}, "metrics": {}, "higher_is_better": {}, "dir": self.path}
        if status.get("ok") and not isinstance(metrics, dict):
            return {
                "status": {"ok": False, "error": f"{self.path}/metrics.json: not a mapping"},
                "metrics": {},
                "higher_is_better": {},
                "dir": self.path,
            }
        return {"status": status, "metrics": metrics, "higher_is_better": hib, "dir": self.path}


class Results:
    """`results/`: one folder per variant (the baseline's is `results/baseline`)."""

    def __init__(self, root: Path | str = "results"):
        self.root = Path(root)

    def variant(self, name: str) -> VariantResults:
        return VariantResults(self.root / name)

    def load(self, names) -> dict[str, dict]:
        return {n: self.variant(n).load() for n in names}


def samples(result: dict, task: str) -> list[dict] | None:
    """The logged samples of `task` of a loaded result (None without its folder or its samples)."""
    return VariantResults(result["dir"]).samples(task) if "dir" in result else None


def sample_values(rows, metric: str, flt: str) -> dict:
    """doc_id → per-sample value of `metric` under filter `flt`, from lm-eval's logged samples."""
    return {r["doc_id"]: r[metric] for r in rows if r.get("filter", flt) == flt and metric in r}


def changed_docs(unreproducible: list[dict]) -> int:
    """Docs that scored differently between identical requests, over unreproducible.json's records."""
    return int(sum(r.get("changed_docs", 0) for r in unreproducible or []))
