"""Reading JSON that someone else wrote (reports, contracts, profiles, registry metadata).

`json.loads` recurses once per nesting level and raises `RecursionError` (not a `ValueError`)
on a deeply nested document; every loader of an untrusted file goes through `loads` here, which
turns that, and any document nested deeper than `MAX_DEPTH`, into `InvalidInputError` (exit 2).
"""

from __future__ import annotations

import json
from typing import Any

from fusionguard.errors import InvalidInputError

MAX_DEPTH = 64  # no file fusionguard writes nests deeper than ~6 levels


def depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0, `[]` is 1), computed without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            deepest = max(deepest, level)
            continue
        deepest = max(deepest, level + 1)
        stack.extend((child, level + 1) for child in children)
    return deepest


def loads(text: str | bytes, source: str, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse `text` as JSON.

    Args:
        text: the document.
        source: what it is, for the message ("gate report report/report.json").
        max_depth: deepest nesting accepted.
    Raises:
        InvalidInputError: not valid JSON, or nested deeper than `max_depth` (exit 2).
    """
    try:
        data = json.loads(text)
    except RecursionError:
        raise InvalidInputError(
            f"{source} is nested too deeply to be read (more than {max_depth} levels); it was not written by fusionguard"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InvalidInputError(f"{source} is not valid JSON ({err})") from None
    if depth(data) > max_depth:
        raise InvalidInputError(
            f"{source} is nested {depth(data)} levels deep, more than the {max_depth} accepted; it was not written by fusionguard"
        )
    return data
