"""The one config loader: TOML -> frozen dataclass, every problem listed in one `ConfigError`.

The gate policy (`fusionguard.gate.policy`), the training config (`fusionguard.training.config`) and the experiment
grid (`fusionguard.recipes.experiment`) are typed, frozen dataclass trees. `build` walks a parsed TOML table
against such a tree: unknown sections and keys (with a did-you-mean), wrong types and values
outside a field's rule are all collected, and the caller adds its cross-field problems to the
same list before raising. Supported field types: bool, int, float (finite; an int is accepted),
str, `T | None`, `tuple[T, ...]` (from a TOML array), `Mapping[str, Any]` / `dict[str, Any]` (a
free table, taken as it is) and nested dataclasses (a `[section]` table).
"""

from __future__ import annotations

import collections.abc
import difflib
import math
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from fusionguard.errors import ConfigError

__all__ = ["Rule", "build", "read_toml", "suggest"]

Rule = tuple[Callable[[Any], bool], str]  # (predicate on the typed value, what is allowed)


def read_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """Parse a TOML file; a missing, unreadable or malformed file is a ConfigError (exit 2)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), [f"{what} {path} does not exist; check the path"])
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(str(path), [f"not valid TOML: {err}"]) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(str(path), [f"{what} {path} is unreadable ({err})"]) from None


def suggest(key: str, known: list[str]) -> str:
    """' (did you mean 'x'?)' for a close known key, else the list of known keys."""
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(sorted(known))})"


def build(cls: type, table: Any, problems: list[str], rules: Mapping[str, Rule] | None = None, prefix: str = "") -> Any:
    """An instance of dataclass `cls` from a parsed TOML table, appending every problem found.

    A key that is missing keeps its default; a key with a problem is left at its default too, so
    the walk goes on and reports the rest. `rules` maps a dotted field path ("ablation.strategy")
    to a (predicate, what is allowed) pair checked on the typed value.
    """
    rules = rules or {}
    if not isinstance(table, Mapping):
        problems.append(f"'{prefix.rstrip('.')}' must be a table, got {type(table).__name__}" if prefix
                        else "the config must be a TOML table")
        return cls()
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        path = f"{prefix}{key}"
        if key not in known:
            kind = "section" if isinstance(value, Mapping) else "key"
            problems.append(f"unknown {kind} '{path}'{suggest(key, list(known))}")
            continue
        tp = hints[key]
        if isinstance(tp, type) and is_dataclass(tp):
            if not isinstance(value, Mapping):
                problems.append(f"'{path}' must be a [{path}] table, got {type(value).__name__}")
                continue
            kwargs[key] = build(tp, value, problems, rules, f"{path}.")
            continue
        ok, coerced = _coerce(value, tp)
        if not ok:
            problems.append(f"'{path}' must be {_type_name(tp)}, got {value!r}")
            continue
        rule = rules.get(path)
        if rule is not None and coerced is not None and not rule[0](coerced):
            problems.append(f"'{path}' must be {rule[1]}, got {value!r}")
            continue
        kwargs[key] = coerced
    return cls(**kwargs)


_NAMES = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}


def _is_optional(tp: Any) -> bool:
    return isinstance(tp, types.UnionType) and type(None) in typing.get_args(tp)


def _base(tp: Any) -> Any:
    return [a for a in typing.get_args(tp) if a is not type(None)][0] if _is_optional(tp) else tp


def _type_name(tp: Any) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)] if _is_optional(tp) else [tp]
    names = []
    for a in args:
        origin = typing.get_origin(a)
        if origin is tuple:
            names.append(f"an array of {_type_name(typing.get_args(a)[0]).removeprefix('an ').removeprefix('a ')}s")
        elif origin in (dict, collections.abc.Mapping):
            names.append("a table")
        else:
            names.append(_NAMES.get(a, str(a)))
    return " or ".join(names)


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """(ok, value) for a TOML value against a field type (int accepted where float is)."""
    if value is None:  # TOML has no null; a dict from a dataclass's asdict can hold None for optional fields
        return _is_optional(tp), value
    base = _base(tp)
    origin = typing.get_origin(base)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False, value
        item = typing.get_args(base)[0]
        out = [_coerce(v, item) for v in value]
        return all(ok for ok, _ in out), tuple(v for _, v in out)
    if origin in (dict, collections.abc.Mapping):
        return isinstance(value, Mapping), value
    if base is bool:
        return isinstance(value, bool), value
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if base is float:  # TOML allows inf and nan; no setting may be either (inf would disable a check)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return ok, float(value) if ok else value
    if base is str:
        return isinstance(value, str), value
    return False, value
