"""Shared test configuration. Files are written only under tmp_path."""

import os

# Keep ONNX Runtime and BLAS from oversubscribing the CI machine's two cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _no_leaked_mlflow_tracking_uri():
    """`mlflow.set_tracking_uri` (fusionguard.tracking.connect) also writes MLFLOW_TRACKING_URI into
    this process's environment; undone after each test, so that a later CLI test (whose
    --mlflow-uri reads that variable) does not log to a tracking server that has stopped."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
