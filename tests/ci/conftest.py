"""The CI tests run the gate on the same toy models and data as the gate tests."""

from tests.gate.conftest import toys  # noqa: F401  (a session fixture, re-exported)
