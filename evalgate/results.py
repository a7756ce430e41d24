"""The results store: what a variant's run left in `results/<variant>/`, read in one place.

Written by evalgate.runner (status.json, metrics.json, quality.json, profile.json, lm_eval.json,
samples_<task>.jsonl, fidelity.npz); read here by the run (the baseline's results), the gate and the
report. A missing or unreadable file is a failed variant with the reason, never a crash of the reader.
"""
from __future__ import annotations

import json
from pathlib import Path


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable ({type(e).__name__}: {e})") from None


def load_result(d: Path) -> dict:
    """One variant's outputs: status, flat metrics, metric directions (lm-eval's higher_is_better)."""
    d = Path(d)
    try:
        status = _json(d / "status.json") if (d / "status.json").exists() else {
            "ok": False, "error": f"{d}/status.json missing: the variant did not run"}
        metrics = _json(d / "metrics.json") if (d / "metrics.json").exists() else {}
        hib = {}
        if (d / "lm_eval.json").exists():
            for task, m in _json(d / "lm_eval.json").get("higher_is_better", {}).items():
                for name, up in m.items():
                    hib[f"lmeval/{task}/{name}"] = up
    except ValueError as e:
        return {"status": {"ok": False, "error": str(e)}, "metrics": {}, "higher_is_better": {}, "dir": d}
    return {"status": status, "metrics": metrics, "higher_is_better": hib, "dir": d}


def load_samples(d: Path, task: str) -> list[dict] | None:
    """lm-eval's logged samples of one task (None when the variant has none)."""
    f = Path(d) / f"samples_{task}.jsonl"
    return [json.loads(line) for line in open(f)] if f.exists() else None


def sample_values(rows, metric: str, flt: str) -> dict:
    """doc_id → per-sample value of `metric` under filter `flt`, from lm-eval's logged samples."""
    return {r["doc_id"]: r[metric] for r in rows if r.get("filter", flt) == flt and metric in r}


def load_json(d: Path, name: str) -> dict | None:
    f = Path(d) / name
    return _json(f) if f.exists() else None
