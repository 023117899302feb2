"""The one config loader (fusionguard.config): every problem listed, did-you-mean, typed fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from fusionguard.config import build, read_toml
from fusionguard.errors import ConfigError


@dataclass(frozen=True)
class Inner:
    rate: float = 0.5
    name: str | None = None


@dataclass(frozen=True)
class Outer:
    seed: int = 0
    seeds: tuple[int, ...] = (0,)
    free: dict[str, Any] = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)


def test_a_valid_table_builds_the_typed_tree():
    got = build(Outer, {"seed": 3, "seeds": [1, 2], "free": {"x": [1]}, "inner": {"rate": 1, "name": "a"}}, problems := [])
    assert problems == []
    assert got == Outer(3, (1, 2), {"x": [1]}, Inner(1.0, "a")) and isinstance(got.inner.rate, float)


def test_every_problem_is_listed_with_a_did_you_mean():
    problems: list[str] = []
    got = build(Outer, {"sed": 1, "seeds": [1, "two"], "inner": {"rat": 2.0, "rate": float("inf")}, "free": 3,
                        "seed": True}, problems, rules={"seed": (lambda x: x >= 0, "an integer >= 0")})
    assert got == Outer()  # every bad key keeps its default
    text = "\n".join(problems)
    assert len(problems) == 6, text
    for needle in ("unknown key 'sed' (did you mean 'seed'?)", "'seeds' must be an array of integers",
                   "unknown key 'inner.rat' (did you mean 'rate'?)", "'inner.rate' must be a finite number",
                   "'free' must be a table", "'seed' must be an integer"):
        assert needle in text


def test_rules_and_sections():
    problems: list[str] = []
    build(Outer, {"seed": -1, "inner": 4}, problems, rules={"seed": (lambda x: x >= 0, "an integer >= 0")})
    assert problems == ["'seed' must be an integer >= 0, got -1", "'inner' must be a [inner] table, got int"]


def test_read_toml_errors_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_toml(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("x = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_toml(tmp_path / "bad.toml")
