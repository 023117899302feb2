"""Promotion decided from evidence: re-validate a gate report before the registry copies a model.

`promote` does not trust a report's ``outcome`` field. It rebuilds the policy the report records
(validated like a policy file), requires every check the gate runs to be present, passed (or
skipped only where the policy allows it), and each recorded number to sit on the passing side
of the threshold the policy sets, with the same decision rules as `gate.checks`. Only then does
the registry hash and copy the model (see `fusionguard.registry.Registry.promote`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fusionguard.errors import CheckFailedError, ConfigError
from fusionguard.registry import Registry, VersionInfo

from gate.checks import CHECK_NAMES, FAILED, PASSED, SKIPPED
from gate.policy import Policy, load_policy, policy_from_dict
from gate.report import REPORT_VERSION


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


class _Evidence:
    """Collects every reason a report does not show a passing candidate."""

    def __init__(self, checks: Mapping[str, Mapping[str, Any]]) -> None:
        self.checks = checks
        self.problems: list[str] = []

    def bound(self, check: str, name: str, side: str) -> float | None:
        """checks[check].numbers[name][side] as a finite number, or None with a problem noted."""
        numbers = self.checks.get(check, {}).get("numbers")
        entry = numbers.get(name) if isinstance(numbers, Mapping) else None
        value = _number(entry.get(side)) if isinstance(entry, Mapping) else None
        if value is None:
            self.problems.append(f"{check}: the report records no finite {name}.{side}")
        return value

    def at_least(self, check: str, name: str, side: str, threshold: float, what: str) -> None:
        value = self.bound(check, name, side)
        if value is not None and value < threshold:
            self.problems.append(f"{check}: {name}.{side} = {value:g} is below {what} = {threshold:g}")

    def below(self, check: str, name: str, side: str, threshold: float, what: str) -> None:
        value = self.bound(check, name, side)
        if value is not None and value >= threshold:
            self.problems.append(f"{check}: {name}.{side} = {value:g} reaches {what} = {threshold:g}")


def report_problems(report: Mapping[str, Any], expected_policy: Policy | None = None) -> list[str]:
    """Every reason `report` does not show a candidate that passed its recorded policy.

    Args:
        report: the parsed report.json.
        expected_policy: when given, the report's policy must equal it.
    Returns:
        Problems, one line each; empty when the evidence holds.
    """
    problems: list[str] = []
    if report.get("report_version") != REPORT_VERSION:
        problems.append(f"report_version is {report.get('report_version')!r}; this fusionguard reads {REPORT_VERSION}")
    if report.get("outcome") != "passed" or report.get("exit_code") != 0 or isinstance(report.get("exit_code"), bool):
        problems.append(f"outcome {report.get('outcome')!r} with exit_code {report.get('exit_code')!r} is not a pass")
    raw_policy = report.get("policy")
    if not isinstance(raw_policy, Mapping):
        return problems + ["the report records no policy"]
    try:
        policy = policy_from_dict(raw_policy, "the report's policy")
    except ConfigError as err:
        return problems + [f"the recorded policy is invalid: {p}" for p in err.problems]
    if expected_policy is not None and policy != expected_policy:
        problems.append("the report was made under another policy than --policy requires")

    raw_checks = report.get("checks")
    if not isinstance(raw_checks, list) or not all(isinstance(c, Mapping) for c in raw_checks):
        return problems + ["the report's checks are not a list of objects"]
    names = [c.get("name") for c in raw_checks]
    if names != list(CHECK_NAMES):
        return problems + [f"the report lists checks {names}, expected {list(CHECK_NAMES)} in that order"]
    checks = {str(c["name"]): c for c in raw_checks}
    no_baseline = report.get("baseline") is None
    for name, c in checks.items():
        outcome = c.get("outcome")
        may_skip = name == "attention" or (name in ("integrity", "quality") and no_baseline and not policy.baseline.required)
        if outcome == FAILED or outcome not in (PASSED, SKIPPED) or c.get("exit_code", 0) != 0:
            problems.append(f"check {name} is {outcome!r}")
        elif outcome == SKIPPED and not may_skip:
            problems.append(f"check {name} was skipped, which the policy does not allow for a promotion")
    if no_baseline and policy.baseline.required:
        problems.append("the report has no baseline, but its policy requires one")

    ev = _Evidence(checks)
    a, sh = policy.ablation, policy.shapley
    ev.at_least("visual_ablation", "visual_drop", "high", a.min_visual_drop, "ablation.min_visual_drop")
    if a.min_text_drop is not None:
        ev.at_least("visual_ablation", "text_drop", "high", a.min_text_drop, "ablation.min_text_drop")
    if sh.min_visual_share is not None:
        ev.at_least("visual_ablation", "visual_share", "high", sh.min_visual_share, "shapley.min_visual_share")
    if checks["integrity"].get("outcome") == PASSED:
        limit = policy.integrity.max_correlation
        ev.below("integrity", "spearman_mean", "high", limit, "integrity.max_correlation")
        ev.below("integrity", "pearson", "high", limit, "integrity.max_correlation")
    if checks["quality"].get("outcome") == PASSED:
        ev.at_least("quality", "difference", "low", -policy.quality.margin, "-quality.margin")
    at = policy.attention
    if checks["attention"].get("outcome") == PASSED:
        if at.min_visual_mass is not None:
            ev.at_least("attention", "visual_mass", "high", at.min_visual_mass, "attention.min_visual_mass")
        numbers = checks["attention"].get("numbers")
        heads = numbers.get("entropy_per_head") if isinstance(numbers, Mapping) else None
        if at.min_entropy is not None or at.max_entropy is not None:
            if not isinstance(heads, list) or not heads or any(_number(h) is None for h in heads):
                ev.problems.append("attention: the report records no finite entropy_per_head")
            else:
                for h, e in enumerate(heads):
                    if at.min_entropy is not None and e < at.min_entropy:
                        ev.problems.append(f"attention: head {h} entropy {e:g} is below attention.min_entropy")
                    if at.max_entropy is not None and e > at.max_entropy:
                        ev.problems.append(f"attention: head {h} entropy {e:g} is above attention.max_entropy")
    elif at.min_visual_mass is not None or at.min_entropy is not None or at.max_entropy is not None:
        ev.problems.append("attention: the policy sets attention thresholds but the check did not run")
    return problems + ev.problems


def verifier(expected_policy: Policy | None = None):  # noqa: ANN201 - a ReportVerifier
    """The `verify_report` callback for `Registry.promote`."""

    def verify(report: Mapping[str, Any], source: str) -> None:
        problems = report_problems(report, expected_policy)
        if problems:
            raise CheckFailedError(
                f"refusing to promote: the evidence in {source} does not show a passing candidate:\n  - "
                + "\n  - ".join(problems)
                + "\nonly a candidate the gate passed can be promoted; run the gate again"
            )

    return verify


def promote(
    report_dir: str | Path,
    registry_dir: str | Path,
    model: str | Path | None = None,
    policy: str | Path | None = None,
) -> VersionInfo:
    """Re-validate the gate report in `report_dir` and promote its model into the registry.

    Args:
        report_dir: the gate's --out directory.
        registry_dir: the registry (created if missing).
        model: the model file; default: the candidate path the report records.
        policy: a policy TOML the report's recorded policy must equal (optional).
    Raises:
        InvalidInputError: unusable inputs (exit 2).
        CheckFailedError: the evidence does not show a pass, or the model differs (exit 1).
    """
    expected = load_policy(policy) if policy is not None else None
    return Registry(registry_dir).promote(model, report_dir, verify_report=verifier(expected))
