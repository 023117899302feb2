"""Errors of the export subsystem, and the exit codes they carry.

- `ExportFailedError` (exit 3, an `EvaluationError`): the torch → ONNX conversion itself failed,
  so no model exists that could be checked.
- `ExportVerificationError` (exit 1, a `CheckFailedError`): a model was produced but failed a
  verification check (checker, strict shape inference, contract round trip, ONNX Runtime session
  or parity against torch). The model ran the checks and did not pass them: it is blocked, like a
  gate candidate that fails a check. The file is kept only under an obviously failed name.

Bad options, checkpoints or data are `fusionguard.errors.InvalidInputError` (exit 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fusionguard.errors import CheckFailedError, EvaluationError


class ExportFailedError(EvaluationError):
    """torch.onnx.export could not convert the model (exit 3)."""


class ExportVerificationError(CheckFailedError):
    """An exported model failed verification (exit 1).

    Attributes:
        failures: one line per failed check, with the measured numbers.
        kept_as: where the failed model was kept (an obviously failed name), or None if removed.
    """

    def __init__(self, model: str, failures: Sequence[str], kept_as: Path | None = None) -> None:
        self.failures = list(failures)
        self.kept_as = kept_as
        lines = [f"the exported model {model} failed verification ({len(self.failures)} failed check(s)):"]
        lines += [f"  - {line}" for line in self.failures]
        if kept_as is not None:
            lines.append(f"the failed model is kept as {kept_as} for inspection; do not deploy it")
        lines.append("fix the model or the exporter and export again; nothing was written under the requested name")
        super().__init__("\n".join(lines))
