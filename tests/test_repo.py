"""The repository itself: what travels to a GPU host must fit beside one bundle part."""
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CARRY_LIMIT = 64 * 2**20   # the lent GPU machines take the tracked tree and one carried part, 64 MiB together


def test_tracked_tree_fits_beside_a_bundle_part():
    """A bundle part is PART_BYTES (gpu/build-bundle.sh); the tracked files must fit in what is left, or no
    GPU session can install the bundle (seen 2026-11-26: 6 MB of new results pushed the tree over)."""
    try:
        files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked tree cannot be listed")
    # each file counted in whole 4 KiB blocks, as the device counts a tree (2026-11-26: 15.7 MB of 2,292 files
    # beside a 50 MB part was refused as over 64 MiB; in blocks that is 20.8 MiB + 47.7 MiB)
    size = sum(-(-(ROOT / f).stat().st_size // 4096) * 4096
               for f in files.decode().split("\0") if f and (ROOT / f).is_file())
    part = int(re.search(r"PART_BYTES:-(\d+)", (ROOT / "gpu/build-bundle.sh").read_text()).group(1))
    assert size + part <= CARRY_LIMIT, (
        f"tracked files {size / 2**20:.1f} MiB + a {part / 2**20:.1f} MiB bundle part exceed 64 MiB: "
        "gzip logs in docs/results (gpu/collect.py does) or lower PART_BYTES and rebuild the bundle")


def test_collect_keeps_the_samples_of_a_variant_a_look_stopped(tmp_path, monkeypatch):
    """gpu/collect.py: a variant stopped at a sequential look keeps the docs that look evaluated (gzipped),
    so an odd stop can be checked doc by doc; a variant evaluated in full keeps its metrics only."""
    import gzip
    import json
    import sys

    monkeypatch.syspath_prepend(str(ROOT / "gpu"))
    import collect

    from evalgate.results import VariantResults

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(collect, "mlflow_runs", lambda: [])
    row = {"doc_id": 0, "word_perplexity": [-16.5, 11]}
    for name, early in (("baseline", None), ("draft", {"kind": "sequential", "look": 1})):
        store = VariantResults(tmp_path / "results" / name)
        store.write_quality({"metrics": {}, "times": {}, "early": early})
        store.write_samples({"fx_ppl": [row]})
    evaluated_on = VariantResults(tmp_path / "results" / "draft_eager")   # a look not reproduced, then evaluated on
    evaluated_on.write_quality({"metrics": {}, "times": {}, "early": None})
    evaluated_on.write_samples({"fx_ppl": [row], "fx_ppl.unreproduced": [row]})
    evaluated_on.write("unreproducible.json", [{"look": 1, "task": "fx_ppl", "docs": 50, "changed_docs": 9}])
    retried = VariantResults(tmp_path / "results" / "draft_retried")   # evaluated again alone (retry_unreproducible)
    retried.write_quality({"metrics": {}, "times": {}, "early": None})
    retried.write_samples({"fx_ppl": [row], "fx_ppl.repeat": [row], "fx_add": [row]})
    retried.write("unreproducible.json", [{"phase": "look", "look": 2, "task": "fx_ppl", "docs": 100, "changed_docs": 26}])
    assert retried.set_aside_quality() == 26
    retried.write_samples({"fx_ppl": [row]})
    monkeypatch.setattr(sys, "argv", ["collect.py", "--seconds", "1", "--command", "test", "--out", str(tmp_path / "out")])
    assert collect.main() == 0
    got = tmp_path / "out/variants"
    assert json.loads(gzip.decompress((got / "draft/samples_fx_ppl.jsonl.gz").read_bytes())) == row
    assert not list((got / "baseline").glob("samples_*"))
    kept = got / "draft_eager"
    assert [f.name for f in kept.glob("samples_*")] == ["samples_fx_ppl.unreproduced.jsonl.gz"]
    assert json.loads((kept / "unreproducible.json").read_text())[0]["changed_docs"] == 9
    kept = got / "draft_retried"
    assert sorted(f.name for f in kept.glob("*samples_*")) == ["first.samples_fx_ppl.jsonl.gz",
                                                               "first.samples_fx_ppl.repeat.jsonl.gz"]
    assert json.loads((kept / "unreproducible.first.json").read_text())[0]["changed_docs"] == 26


def test_collect_keeps_this_runs_warm_up_server_log_only(tmp_path, monkeypatch):
    """gpu/collect.py: the engine's warm-up server log (what it cached while the fixture trained) comes with
    the run that started it; a later run whose fixture existed started none and does not carry the old one."""
    import gzip
    import os
    import sys

    monkeypatch.syspath_prepend(str(ROOT / "gpu"))
    import collect

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(collect, "mlflow_runs", lambda: [])
    (tmp_path / "results").mkdir()
    log = tmp_path / collect.WARM_UP / "server.log"
    log.parent.mkdir(parents=True)
    log.write_text("INFO Graph capturing finished in 2 secs\n")
    for n, age in ((1, 0), (2, 3600)):
        os.utime(log, (log.stat().st_atime, log.stat().st_mtime - age))
        monkeypatch.setattr(sys, "argv", ["collect.py", "--seconds", "600", "--command", "t", "--out", str(tmp_path / f"o{n}")])
        assert collect.main() == 0
    assert gzip.decompress((tmp_path / "o1/warm-up-server.log.gz").read_bytes()).startswith(b"INFO Graph")
    assert not (tmp_path / "o2/warm-up-server.log.gz").exists()
