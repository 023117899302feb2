"""Errors cross process boundaries (Ray workers, spawn pools) as themselves."""

from __future__ import annotations

import pickle

import pytest

from fusionguard.errors import (
    ConfigError, ContractError, DataValidationError, EvaluationError, FusionGuardError, InvalidInputError,
)
from fusionguard.streaming import UnsortedDataError


@pytest.mark.parametrize("err", [
    InvalidInputError("bad option"),
    EvaluationError("cannot evaluate"),
    ConfigError("policy.toml", ["a", "b"]),
    ContractError("m.onnx", ["no contract"]),
    DataValidationError("d.parquet", ["missing columns ['x']"]),
    UnsortedDataError("d.parquet", "q7", 3),
])
def test_every_error_survives_pickling(err: FusionGuardError):
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert str(back) == str(err) and back.exit_code == err.exit_code
    assert back.__dict__ == err.__dict__
