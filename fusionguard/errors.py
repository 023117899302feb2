"""The error hierarchy. The exit code belongs to the exception type, so the CLI has one `except`.

Exit codes (the README and every command's --help say the same): 0 passed · 1 blocked (a check failed) · 2 bad usage or invalid input ·
3 a check could not be evaluated.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

EXIT_PASSED = 0
EXIT_BLOCKED = 1
EXIT_INVALID = 2
EXIT_UNEVALUABLE = 3


class FusionGuardError(Exception):
    """Root of every error fusionguard raises on purpose. Messages say what, where and how to fix."""

    exit_code: int = EXIT_INVALID

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple:
        """Pickled by state, not by constructor arguments (subclasses take other arguments), so
        an error raised in a Ray worker comes back to the driver as itself."""
        return _rebuild, (type(self), dict(self.__dict__))


def _rebuild(cls: type[FusionGuardError], state: dict) -> FusionGuardError:
    err = cls.__new__(cls)
    Exception.__init__(err, state.get("message", ""))
    err.__dict__.update(state)
    return err


class InvalidInputError(FusionGuardError):
    """A file, option or value supplied by the user is unusable (exit 2)."""

    exit_code = EXIT_INVALID


class ProblemsError(InvalidInputError):
    """Invalid input with several independent problems, all reported at once.

    Attributes:
        problems: one human-readable line per problem.
    """

    def __init__(self, headline: str, problems: Sequence[str]) -> None:
        self.headline = headline
        self.problems = list(problems)
        lines = [f"{headline} ({len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}):"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class ConfigError(ProblemsError):
    """A TOML config or policy failed validation; every problem is listed."""

    def __init__(self, source: str, problems: Iterable[str]) -> None:
        super().__init__(f"invalid configuration in {source}", list(problems))
        self.source = source


class ContractError(ProblemsError):
    """A model contract is missing, malformed, or disagrees with the ONNX graph."""

    def __init__(self, model: str, problems: Iterable[str]) -> None:
        super().__init__(f"model contract problem in {model}", list(problems))
        self.model = model


class DataValidationError(ProblemsError):
    """A dataset failed validation; every problem is listed with counts."""

    def __init__(self, path: str, problems: Iterable[str]) -> None:
        super().__init__(f"dataset {path} is invalid", list(problems))
        self.path = path


class CheckFailedError(FusionGuardError):
    """A release check ran and the candidate failed it (exit 1)."""

    exit_code = EXIT_BLOCKED


class EvaluationError(FusionGuardError):
    """A check could not be evaluated (exit 3). The gate fails closed on it."""

    exit_code = EXIT_UNEVALUABLE
