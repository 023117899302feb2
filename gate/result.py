"""The gate's verdict as data: `GateResult` (what `run_gate` returns and the reports render).

It lives apart from the runner so that the report and the plots, which render a result, do not
import the runner that produces one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fusionguard import metrics
from fusionguard.errors import EXIT_BLOCKED, EXIT_INVALID, EXIT_PASSED, EXIT_UNEVALUABLE

from fusionguard.gate.checks import CheckResult, GateOutcome, Outcome
from fusionguard.gate.measures import ModelMeasures
from fusionguard.gate.policy import Policy

__all__ = ["GateResult", "ModelInfo", "OUTCOME_BY_EXIT", "exit_code"]



OUTCOME_BY_EXIT = {
    EXIT_PASSED: GateOutcome.PASSED, EXIT_BLOCKED: GateOutcome.BLOCKED,
    EXIT_INVALID: GateOutcome.INVALID, EXIT_UNEVALUABLE: GateOutcome.UNEVALUATED,
}


@dataclass
class ModelInfo:
    """What the report says about one model file."""

    path: str
    sha256: str | None
    variant: str | None = None
    provider: str | None = None
    contract: dict[str, Any] | None = None
    files: dict[str, str] | None = None  # sha256 of model.onnx and each external-data file (promote checks it)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "sha256": self.sha256, "files": self.files, "variant": self.variant,
            "provider": self.provider, "contract": self.contract,
        }


@dataclass
class GateResult:
    """The verdict of one gate run."""

    exit_code: int
    outcome: GateOutcome
    checks: list[CheckResult]
    candidate: ModelInfo
    baseline: ModelInfo | None
    data: dict[str, Any]
    policy: Policy
    report_dir: Path | None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage; "check.NAME": a check's own time
    measures: ModelMeasures | None = None  # kept for plots and the profile, not serialised
    baseline_ndcg: np.ndarray | None = None
    groups: metrics.QueryGroups | None = None
    feeds: dict[str, np.ndarray] | None = None
    features: dict[str, np.ndarray] | None = None  # input -> (N,) per-row L2 norms, for the profile

    @property
    def message(self) -> str:
        """One line per check that did not pass."""
        lines = [f"{c.name}: {r}" for c in self.checks if c.outcome in (Outcome.FAILED, Outcome.ERROR) for r in c.reasons]
        return "\n".join(lines)


def exit_code(results: list[CheckResult]) -> int:
    """Invalid input (2) first, then a failed check (1: the candidate is blocked for sure), then
    an unevaluable check (3), else 0. Skipped checks do not block: skipping is a policy decision."""
    codes = {c.exit_code for c in results}
    for code in (EXIT_INVALID, EXIT_BLOCKED, EXIT_UNEVALUABLE):
        if code in codes:
            return code
    return EXIT_PASSED
