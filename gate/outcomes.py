"""The outcomes of the gate, as one enum per verdict (imported by the light CLI path as well).

StrEnums: a member compares equal to, and serialises as, its string, so the report's JSON and a
parsed report's strings meet the same names.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ERROR", "FAILED", "PASSED", "SKIPPED", "VERDICT_TITLE", "GateOutcome", "Outcome"]


class Outcome(StrEnum):
    """A check's outcome. A StrEnum: it compares equal to, and serialises as, its string, so the
    report's JSON and a parsed report's strings meet the same names."""

    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"
    SKIPPED = "skipped"


PASSED, FAILED, ERROR, SKIPPED = Outcome.PASSED, Outcome.FAILED, Outcome.ERROR, Outcome.SKIPPED


class GateOutcome(StrEnum):
    """The verdict of a gate run, one per exit code (a StrEnum, like `fusionguard.gate.checks.Outcome`)."""

    PASSED = "passed"  # exit 0
    BLOCKED = "blocked"  # exit 1: a check failed
    INVALID = "invalid"  # exit 2: invalid input
    UNEVALUATED = "unevaluated"  # exit 3: a check could not be evaluated


# The verdict as the report's heading and the plots' title say it.
VERDICT_TITLE = {
    GateOutcome.PASSED: "PASSED", GateOutcome.BLOCKED: "BLOCKED",
    GateOutcome.INVALID: "INVALID INPUT", GateOutcome.UNEVALUATED: "COULD NOT EVALUATE",
}
