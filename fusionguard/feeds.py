"""Feed validation: model inputs checked against the contract, every problem at once.

The scorer checks its feeds with `check_feeds`; the monitor's HTTP path calls `feed_problems`
itself, to count each problem's reason tag on a Prometheus label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fusionguard.contract import ModelContract
from fusionguard.errors import ProblemsError

__all__ = ["InvalidFeedsError", "check_feeds", "feed_problems"]


class InvalidFeedsError(ProblemsError):
    """Model inputs that do not match the contract. `reasons` holds one low-cardinality tag per
    problem (missing_input, unexpected_input, not_an_array, wrong_dtype, wrong_shape,
    row_mismatch, empty, non_finite), e.g. for a Prometheus label."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.reasons = tuple(reason for reason, _ in problems)
        super().__init__("invalid model inputs", [message for _, message in problems])


def feed_problems(contract: ModelContract, feeds: Mapping[str, object]) -> list[tuple[str, str]]:
    """Every way `feeds` disagrees with the contract, as (reason, message) pairs; [] when fine."""
    problems: list[tuple[str, str]] = []
    expected = list(contract.input_names)
    for name in expected:
        if name not in feeds:
            problems.append(("missing_input", f"input '{name}' is missing; the model needs {expected}"))
    for name in feeds:
        if name not in expected:
            problems.append(("unexpected_input", f"input '{name}' is not a model input; the model takes {expected}"))
    rows: dict[str, int] = {}
    for spec in contract.inputs:
        value = feeds.get(spec.name)
        if value is None:
            continue
        if not isinstance(value, np.ndarray):
            problems.append(("not_an_array", f"input '{spec.name}' is a {type(value).__name__}; pass a numpy array"))
            continue
        want = ("N", *spec.shape)
        if value.dtype != np.dtype(spec.dtype):
            problems.append(
                ("wrong_dtype", f"input '{spec.name}' has dtype {value.dtype}; the contract says {spec.dtype} "
                 f"(convert with .astype('{spec.dtype}'))")
            )
        if value.ndim != 1 + len(spec.shape) or tuple(value.shape[1:]) != spec.shape:
            problems.append(
                ("wrong_shape", f"input '{spec.name}' has shape {list(value.shape)}; the contract says "
                 f"{list(want)} (N rows, one per candidate)")
            )
            continue
        rows[spec.name] = int(value.shape[0])
        # a finite sum proves every value finite without a full-size boolean temporary; only a
        # non-finite sum (a NaN/inf, or an overflow) pays for the exact count
        if value.dtype.kind == "f" and not _sum_is_finite(value):
            bad = ~np.isfinite(value)
            n_bad = int(np.count_nonzero(bad))
            if n_bad:
                first_row = int(np.argwhere(bad)[0][0])
                problems.append(
                    ("non_finite", f"input '{spec.name}' holds {n_bad} NaN/inf values (first in row {first_row}); "
                     "every value must be finite")
                )
    if len(set(rows.values())) > 1:
        problems.append(("row_mismatch", f"inputs disagree on the number of rows N: {rows}; axis 0 must count the same candidates"))
    elif rows and next(iter(rows.values())) == 0:
        problems.append(("empty", "the inputs have 0 rows; send at least one candidate"))
    return problems


def _sum_is_finite(value: np.ndarray) -> bool:
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(value.sum()))


def check_feeds(contract: ModelContract, feeds: Mapping[str, object]) -> int:
    """Validate `feeds` against the contract and return the number of rows N.

    Raises:
        InvalidFeedsError: (exit 2) listing every problem, each naming its tensor.
    """
    problems = feed_problems(contract, feeds)
    if problems:
        raise InvalidFeedsError(problems)
    return int(next(iter(feeds.values())).shape[0])  # type: ignore[union-attr]
