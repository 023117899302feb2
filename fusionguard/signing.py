"""Signed gate reports: HMAC-SHA256 over the report's canonical JSON bytes.

With `FUSIONGUARD_SIGNING_KEY` in the environment, `fusionguard gate` adds a ``signature`` field
to report.json and `fusionguard promote` refuses a report whose signature is missing or wrong.
Without the key neither signs nor checks (docs/gate.md, "Signed reports").

Canonical form (what the HMAC covers): the report object with its top-level ``signature`` key
removed, serialised as ``json.dumps(obj, sort_keys=True, separators=(",", ":"),
ensure_ascii=True, allow_nan=False)`` and encoded as UTF-8 (pure ASCII after escaping). The
key is the environment variable's value encoded as UTF-8. The signature field is::

    "signature": {"algorithm": "HMAC-SHA256", "canonical": "json-sorted-compact-ascii-v1", "value": "<64 hex digits>"}
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import Mapping
from typing import Any

from fusionguard.errors import CheckFailedError, InvalidInputError

KEY_ENV = "FUSIONGUARD_SIGNING_KEY"
SIGNATURE_FIELD = "signature"
ALGORITHM = "HMAC-SHA256"
CANONICAL = "json-sorted-compact-ascii-v1"
_HEX64 = re.compile(r"[0-9a-f]{64}")


def canonical_bytes(report: Mapping[str, Any]) -> bytes:
    """The bytes the signature covers: `report` without its top-level signature, canonical JSON.

    Raises:
        InvalidInputError: the report holds values JSON cannot represent (NaN, infinity).
    """
    body = {k: v for k, v in report.items() if k != SIGNATURE_FIELD}
    try:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise InvalidInputError(f"the report cannot be put in canonical form for signing ({err})") from None
    return text.encode("utf-8")


def signing_key(environ: Mapping[str, str] | None = None) -> bytes | None:
    """The key from `FUSIONGUARD_SIGNING_KEY`, None when the variable is unset.

    An empty value is returned as b"" so callers can tell "unset" from "set but empty".
    """
    env = os.environ if environ is None else environ
    value = env.get(KEY_ENV)
    return None if value is None else value.encode("utf-8")


def signature(report: Mapping[str, Any], key: bytes) -> str:
    """Hex HMAC-SHA256 of the report's canonical bytes."""
    return hmac.new(key, canonical_bytes(report), hashlib.sha256).hexdigest()


def sign(report: Mapping[str, Any], key: bytes) -> dict[str, Any]:
    """A copy of `report` with its signature field set."""
    signed = {k: v for k, v in report.items() if k != SIGNATURE_FIELD}
    signed[SIGNATURE_FIELD] = {"algorithm": ALGORITHM, "canonical": CANONICAL, "value": signature(signed, key)}
    return signed


def verify(report: Mapping[str, Any], key: bytes, source: str) -> None:
    """Check the report's signature with `key` (constant-time comparison).

    Raises:
        InvalidInputError: the key is empty (a misconfigured pipeline), exit 2.
        CheckFailedError: the report is unsigned or its signature does not match, exit 1.
    """
    if not key:
        raise InvalidInputError(
            f"{KEY_ENV} is set but empty; set it to the same secret the gate signed with, or unset it to promote "
            "unsigned reports"
        )
    field = report.get(SIGNATURE_FIELD)
    if field is None:
        raise CheckFailedError(
            f"{source} is not signed, but {KEY_ENV} is set: only a report the gate signed with that key can be "
            "promoted; run the gate with the same key in its environment"
        )
    if (
        not isinstance(field, Mapping)
        or field.get("algorithm") != ALGORITHM
        or field.get("canonical") != CANONICAL
        or not isinstance(field.get("value"), str)
        or not _HEX64.fullmatch(field["value"])
    ):
        raise CheckFailedError(f"{source} has a malformed signature field; expected {ALGORITHM} over {CANONICAL}")
    if not hmac.compare_digest(field["value"], signature(report, key)):
        raise CheckFailedError(
            f"{source}: the signature does not match; the report was changed after the gate signed it, or it was "
            f"signed with another key; run the gate again"
        )
