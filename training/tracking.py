"""Optional MLflow logging of experiment runs (the `tracking` extra: mlflow-skinny).

mlflow is imported only when a tracking URI is given; without the extra, `require_mlflow`
raises a ConfigError that says how to install it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fusionguard.errors import ConfigError

logger = logging.getLogger(__name__)


def require_mlflow():
    """The mlflow module, or a ConfigError (exit 2) naming the extra to install."""
    try:
        import mlflow
    except ModuleNotFoundError:
        raise ConfigError("--mlflow-uri", ["MLflow logging needs the 'tracking' extra: pip install 'fusionguard[tracking]'"]) from None
    return mlflow


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def log_run(uri: str, experiment: str, run_name: str, params: Mapping[str, Any], log_jsonl: Path,
            onnx_path: Path, metrics: Mapping[str, float]) -> str:
    """Log one run: flattened params, every numeric field of each JSONL epoch line as a metric
    at step = epoch, extra scalar metrics, and the ONNX model as an artifact. Returns the run id."""
    mlflow = require_mlflow()
    if "://" not in uri or uri.startswith("file:"):
        # MLflow >= 3.x refuses the filesystem store unless opted in; a local path was asked for explicitly.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.log_params({k: str(v) for k, v in _flatten(params).items()})
        if log_jsonl.is_file():
            for line in log_jsonl.read_text(encoding="utf-8").splitlines():
                record = json.loads(line)
                step = int(record.get("epoch", 0))
                values = {k: float(v) for k, v in record.items()
                          if k != "epoch" and isinstance(v, int | float) and not isinstance(v, bool)}
                mlflow.log_metrics(values, step=step)
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        mlflow.log_artifact(str(onnx_path), artifact_path="model")
        return run.info.run_id
