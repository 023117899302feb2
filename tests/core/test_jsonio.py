"""Untrusted JSON: deep nesting is an InvalidInputError (exit 2), never a RecursionError."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fusionguard import jsonio
from fusionguard.contract import ModelContract
from fusionguard.errors import InvalidInputError, ProblemsError
from fusionguard.profile import ReferenceProfile

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
)


def _reference_depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max((_reference_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_reference_depth(v) for v in value), default=0)
    return 0


@given(JSON)
def test_depth_matches_a_recursive_reference(value):
    assert jsonio.depth(value) == _reference_depth(value)
    assert jsonio.loads(json.dumps(value), "doc") == value


@pytest.mark.parametrize("n", [65, 5_000, 500_000])
def test_deep_documents_are_invalid_input(n):
    with pytest.raises(InvalidInputError, match="nested"):
        jsonio.loads("[" * n + "]" * n, "doc")
    with pytest.raises(InvalidInputError, match="nested"):
        ModelContract.from_json("{\"a\": " * n + "1" + "}" * n, "sidecar")
    with pytest.raises(ProblemsError, match="nested"):
        ReferenceProfile.from_json("[" * n + "]" * n, "profile.json")


def test_bytes_that_are_not_utf8_are_invalid_input():
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        jsonio.loads(b"\xff\xfe\x00", "doc")
