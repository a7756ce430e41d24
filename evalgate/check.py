"""`evalgate check`: the CI exit code. The gate decides every variant (reports/gate.json); this decides
whether the *change* under test may merge, by the policy declared in conf/gate/ (`gate.check`):

  required   variants that must be accepted (a required variant missing from the run fails too: a
             dropped variant must not pass silently)
  fail_on    one or more of
               any_rejected        any variant rejected
               required_rejected   a `required` variant rejected or missing
               no_winner           nothing beats the baseline beyond the run's noise (the gate's best is none,
                                   the baseline, or within the noise of the baseline)
               deployed_regressed  the deployed variant — the one holding the MLflow registry alias
                                   (`mlflow.alias`, default `champion`; evalgate.registry) — is rejected
                                   in this run, missing from it, or slower on `report.rank_by` than
                                   recorded on its model version by more than `max_slowdown_pct`
  deployed   `registry` (ask the alias), a variant name (no registry needed), or null (no such check)

A run whose baseline failed always fails: nothing was gated. Every failure is one line naming the
variant and why; the exit code is 1 when there is any, else 0. The decision is pure (`evaluate`): the
registry is read by the caller and passed in as `deployed`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from evalgate.config import BASELINE, ConfigError
from evalgate.registry import Deployed

CONDITIONS = ("any_rejected", "required_rejected", "no_winner", "deployed_regressed")
DEFAULT = {"fail_on": ["required_rejected", "deployed_regressed"], "required": [], "deployed": "registry",
           "max_slowdown_pct": None}


@dataclass(frozen=True)
class Policy:
    fail_on: tuple[str, ...]
    required: tuple[str, ...]
    deployed: str | None          # "registry", a variant name, or None
    max_slowdown_pct: float | None


@dataclass
class Outcome:
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def lines(self) -> list[str]:
        head = "evalgate check: PASS" if self.ok else f"evalgate check: FAIL ({len(self.failures)})"
        return [head, *(f"FAIL {f}" for f in self.failures), *(f"  ok {n}" for n in self.notes)]


def parse_policy(gate_section: dict | None) -> Policy:
    """`gate.check` → Policy; a bad value is a ConfigError naming its key (the CLI's exit 2)."""
    raw = (gate_section or {}).get("check") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"gate.check: expected a mapping, got {raw!r}")
    unknown = set(raw) - set(DEFAULT)
    if unknown:
        raise ConfigError(f"gate.check.{sorted(unknown)[0]}: unknown field (known: {', '.join(DEFAULT)})")
    p = {**DEFAULT, **raw}
    fail_on = [p["fail_on"]] if isinstance(p["fail_on"], str) else p["fail_on"]
    if not isinstance(fail_on, list) or not all(c in CONDITIONS for c in fail_on):
        raise ConfigError(f"gate.check.fail_on: expected one or a list of {', '.join(CONDITIONS)}, got {p['fail_on']!r}")
    required = p["required"] or []
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise ConfigError(f"gate.check.required: expected a list of variant names, got {required!r}")
    if p["deployed"] is not None and not isinstance(p["deployed"], str):
        raise ConfigError(f"gate.check.deployed: expected `registry`, a variant name or null, got {p['deployed']!r}")
    slow = p["max_slowdown_pct"]
    if slow is not None and (isinstance(slow, bool) or not isinstance(slow, (int, float)) or slow < 0):
        raise ConfigError(f"gate.check.max_slowdown_pct: expected null or a number >= 0, got {slow!r}")
    return Policy(tuple(fail_on), tuple(required), p["deployed"], slow)


def _short(reason: str, limit: int = 160) -> str:
    return reason if len(reason) <= limit else reason[: limit - 1] + "…"


def evaluate(policy: Policy, gate: dict, deployed: Deployed | None = None, metrics: dict | None = None,
             rank_by: str = "output_throughput") -> Outcome:
    """The policy applied to a gate result. `metrics`: this run's headline metrics per variant (for the
    slowdown check); `deployed`: the production variant, None when there is none."""
    out = Outcome()
    verdicts = gate.get("variants") or {}
    base = gate.get("baseline", BASELINE)
    bv = verdicts.get(base)
    if bv is None or bv["verdict"] != "accept":
        out.failures.append(f"{base}: the baseline {'is missing' if bv is None else 'was rejected'}: "
                            f"{_short(bv['reason']) if bv else 'no gate result'} (nothing was gated)")
        return out
    tagged: dict[str, list[str]] = {}
    if "any_rejected" in policy.fail_on:
        for name, v in verdicts.items():
            if v["verdict"] != "accept":
                tagged.setdefault(name, []).append("rejected")
    if "required_rejected" in policy.fail_on:
        for name in policy.required:
            if name not in verdicts:
                out.failures.append(f"{name}: required, but not in this run's variants")
            elif verdicts[name]["verdict"] != "accept":
                tagged.setdefault(name, []).insert(0, "required")
            else:
                out.notes.append(f"{name}: required and accepted")
    for name, why in tagged.items():
        out.failures.append(f"{name}: {' and '.join(dict.fromkeys(why))}, rejected: {_short(verdicts[name]['reason'])}")
    if "no_winner" in policy.fail_on:
        best = gate.get("best")
        if best is None or best == base:
            out.failures.append(f"(no winner): {'no variant was accepted' if best is None else 'the baseline is still best'}"
                                f" on {rank_by}")
        elif base in (gate.get("best_within_noise") or []):
            out.failures.append(f"(no winner): {best} is best on {rank_by}, but not beyond this run's noise "
                                f"from the baseline")
        else:
            out.notes.append(f"{best}: best accepted variant on {rank_by}")
    if "deployed_regressed" in policy.fail_on:
        _deployed(out, policy, verdicts, deployed, metrics or {}, rank_by)
    return out


def _deployed(out: Outcome, policy: Policy, verdicts: dict, deployed: Deployed | None, metrics: dict,
              rank_by: str) -> None:
    if deployed is None:
        out.notes.append("(deployed): none recorded, nothing to compare with")
        return
    name, where = deployed.variant, deployed.source
    if name not in verdicts:
        out.failures.append(f"{name}: deployed ({where}), but not in this run's variants: it was not re-checked")
        return
    v = verdicts[name]
    if v["verdict"] != "accept":
        out.failures.append(f"{name}: deployed ({where}) and now rejected: {_short(v['reason'])}")
        return
    now = (metrics.get(name) or {}).get(rank_by)
    if policy.max_slowdown_pct is not None and deployed.metric and now is not None:
        from evalgate.select import lower_is_better

        worse = (now / deployed.metric - 1) if lower_is_better(rank_by) else (1 - now / deployed.metric)
        if 100 * worse > policy.max_slowdown_pct:
            out.failures.append(f"{name}: deployed ({where}), {rank_by} {now:.4g} vs {deployed.metric:.4g} recorded "
                                f"({100 * worse:.1f}% worse > {policy.max_slowdown_pct:g}%)")
            return
    out.notes.append(f"{name}: deployed ({where}), still accepted")


def summary_markdown(outcome: Outcome) -> str:
    """The check's result as a GitHub job-summary section (appended to $GITHUB_STEP_SUMMARY)."""
    head = "## evalgate check: " + ("✅ pass" if outcome.ok else f"❌ fail ({len(outcome.failures)})")
    rows = [f"- ❌ {f}" for f in outcome.failures] + [f"- ✅ {n}" for n in outcome.notes]
    return "\n".join([head, "", *rows, ""]) + "\n"


def run_check(cfg, gate_path, results_dir, promote: bool = False) -> int:
    """`evalgate check`: the policy on gate.json, printed and (in GitHub Actions) summarized; the exit
    code. With `promote`, a pass moves the registry alias to the version this gate result registered."""
    import json
    import os
    from pathlib import Path

    from evalgate.results import Results

    gate_path = Path(gate_path)
    if not gate_path.exists():
        raise ConfigError(f"{gate_path}: not found (run the pipeline first: make repro)")
    gate = json.loads(gate_path.read_text())
    policy = parse_policy(cfg.gate)
    rank_by = cfg.report.get("rank_by", "output_throughput")
    store = Results(results_dir)
    metrics = {n: store.variant(n).metrics() for n in gate.get("variants", {})}
    deployed, unreadable = None, None
    if "deployed_regressed" in policy.fail_on and policy.deployed == "registry":
        from evalgate import registry

        try:
            deployed = registry.deployed(cfg.mlflow, rank_by)
        except Exception as e:  # noqa: BLE001 - a gate that cannot see what is deployed must not pass
            unreadable = f"(deployed): the MLflow registry could not be read: {type(e).__name__}: {str(e)[:200]}"
    elif "deployed_regressed" in policy.fail_on and policy.deployed:
        deployed = Deployed(policy.deployed, "gate.check.deployed")
    outcome = evaluate(policy, gate, deployed, metrics, rank_by)
    if unreadable:
        outcome.failures.append(unreadable)
    if promote and outcome.ok:
        from evalgate import registry

        try:
            outcome.notes.append("promoted: " + registry.promote(cfg.mlflow, gate))
        except Exception as e:  # noqa: BLE001 - asked to promote and could not: the job must say so
            outcome.failures.append(f"(promote): {type(e).__name__}: {str(e)[:300]}")
    print("\n".join(outcome.lines()))
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a") as f:
            f.write(summary_markdown(outcome))
    return 0 if outcome.ok else 1
