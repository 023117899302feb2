"""Promotion decided from evidence: re-validate a gate report before the registry copies a model.

`promote` does not trust a report's ``outcome`` field. It rebuilds the policy the report records
(validated like a policy file), requires every check the gate runs to be present, passed (or
skipped only where the policy allows it), and each recorded number to sit on the passing side
of the threshold the policy sets, with the same decision rules as `fusionguard.gate.checks`. Only then does
the registry hash and copy the model: `read_verdict` turns the report into a
`fusionguard.registry.Verdict`, which `Registry.promote` receives (the registry never reads the
report's format).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fusionguard import jsonio, signing
from fusionguard.errors import CheckFailedError, ConfigError, InvalidInputError
from fusionguard.modelfiles import check_manifest, regular_file
from fusionguard.registry import MODEL_FILE, PROFILE_FILE, REPORT_FILE, Registry, Verdict, VersionInfo

from fusionguard.gate.checks import CHECK_NAMES, FAILED, PASSED, SKIPPED, GateOutcome
from fusionguard.gate.policy import Policy, load_policy, policy_from_dict
from fusionguard.gate.report import REPORT_VERSION

ReportVerifier = Callable[[Mapping[str, Any], str], None]  # raises CheckFailedError when the numbers do not pass


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
    if report.get("outcome") != GateOutcome.PASSED or report.get("exit_code") != 0 or isinstance(report.get("exit_code"), bool):
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


def verifier(expected_policy: Policy | None = None) -> ReportVerifier:
    """The `verify_report` callback of `read_verdict`."""

    def verify(report: Mapping[str, Any], source: str) -> None:
        problems = report_problems(report, expected_policy)
        if problems:
            raise CheckFailedError(
                f"refusing to promote: the evidence in {source} does not show a passing candidate:\n  - "
                + "\n  - ".join(problems)
                + "\nonly a candidate the gate passed can be promoted; run the gate again"
            )

    return verify


# ----- reading a report: the gate's format, decoded here and nowhere else ------------------------

def _read_report(report_dir: str | Path) -> tuple[dict[str, Any], str]:
    """The parsed `report.json` of a gate run (a regular file, a JSON object with a candidate) and
    the sha256 of its bytes.

    Raises:
        InvalidInputError: missing, symlinked, unreadable or malformed report (exit 2).
    """
    path = Path(report_dir) / REPORT_FILE
    if not path.exists() and not path.is_symlink():
        raise InvalidInputError(f"no gate report at {path}; run `fusionguard gate ... --out {report_dir}` first")
    regular_file(path, "gate report")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise InvalidInputError(f"gate report {path} is unreadable ({err}); rerun the gate") from None
    data = jsonio.loads(raw, f"gate report {path}")
    if not isinstance(data, dict) or not isinstance(data.get("candidate"), dict):
        raise InvalidInputError(f"gate report {path} has no 'candidate' section; it was not written by `fusionguard gate`")
    return data, hashlib.sha256(raw).hexdigest()


def read_report(report_dir: str | Path) -> dict[str, Any]:
    """The parsed `report.json` of a gate run (see `_read_report`).

    Raises:
        InvalidInputError: missing, symlinked, unreadable or malformed report (exit 2).
    """
    return _read_report(report_dir)[0]


def structural_problems(report: Mapping[str, Any]) -> list[str]:
    """What makes a report not a passing one, before any threshold is looked at."""
    problems = []
    if report.get("outcome") != GateOutcome.PASSED:
        problems.append(f"outcome is {report.get('outcome')!r}, not 'passed'")
    if report.get("exit_code") != 0 or isinstance(report.get("exit_code"), bool):
        problems.append(f"exit_code is {report.get('exit_code')!r}, not 0")
    checks = report.get("checks")
    if not isinstance(checks, list) or not checks:
        return problems + ["it lists no checks"]
    for c in checks:
        if not isinstance(c, dict):
            problems.append("a check entry is not an object")
            continue
        if c.get("outcome") not in (PASSED, SKIPPED) or c.get("exit_code", 0) != 0:
            problems.append(f"check {c.get('name')!r} is {c.get('outcome')!r}")
    return problems


def read_verdict(
    report_dir: str | Path,
    expected_policy: Policy | None = None,
    *,
    verify_report: ReportVerifier | None = None,
    environ: Mapping[str, str] | None = None,
) -> Verdict:
    """The verdict a gate report in `report_dir` supports, for `Registry.promote`.

    The report must be signed when `FUSIONGUARD_SIGNING_KEY` is set (in `environ`, default
    os.environ), say passed with every check passed or skipped, and pass `verify_report`
    (default: `verifier(expected_policy)`, the re-validation of each recorded number against the
    policy the report records). A report that does not gives a verdict that did not pass, whose
    reason the registry's refusal states.

    Raises:
        InvalidInputError: missing, unreadable or malformed report or manifest (exit 2).
        CheckFailedError: a bad signature, or a report recording two sha256 for the model (exit 1).
    """
    report_dir = Path(report_dir)
    report, report_sha = _read_report(report_dir)
    source = f"gate report {report_dir / REPORT_FILE}"
    key = signing.signing_key(environ)
    if key is not None:
        signing.verify(report, key, source)
    candidate = report["candidate"]

    def verdict(passed: bool, reason: str = "", files: Mapping[str, str] | None = None) -> Verdict:
        recorded = candidate.get("path")
        return Verdict(
            passed=passed, reason=reason, source=source, model_files=dict(files or {}),
            model_path=recorded if isinstance(recorded, str) else None,
            variant=str(candidate.get("variant") or "unknown"), signed=key is not None,
            evidence=report_dir / REPORT_FILE, evidence_sha256=report_sha, profile=report_dir / PROFILE_FILE,
        )

    problems = structural_problems(report)
    if problems:
        return verdict(False, (
            f"refusing to promote: the {source} does not describe a passing candidate ({'; '.join(problems)}); "
            "only a passing candidate can be promoted"
        ))
    try:
        (verify_report or verifier(expected_policy))(report, source)
    except CheckFailedError as err:
        return verdict(False, str(err))
    expected = check_manifest(candidate.get("files"), f"{source} (candidate.files)")
    if candidate.get("sha256") != expected[MODEL_FILE]:
        raise CheckFailedError(f"refusing to promote: {source} records two different sha256 for the model")
    return verdict(True, files=expected)


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
    return Registry(registry_dir).promote(model, read_verdict(report_dir, expected))
