"""Optional MLflow logging of training and experiment runs (the `tracking` extra: mlflow-skinny).

mlflow is imported only when a tracking URI is given (an option or MLFLOW_TRACKING_URI); without
the extra, `require_mlflow` raises a ConfigError that says how to install it. Exported models are
logged with the `mlflow.onnx` flavor and a signature (fusionguard.tracking), so a run's model can
be loaded with `mlflow.onnx.load_model("runs:/RUN/model")` and registered as it is.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fusionguard.tracking import connect, require_mlflow, save_onnx_model

logger = logging.getLogger(__name__)

__all__ = ["log_run", "log_training_run", "require_mlflow"]

TRAIN_EXPERIMENT = "fusionguard-train"
CHECKPOINT_FILES = ("config.json", "meta.json", "model.pt", "result.json", "train_log.jsonl")


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _numbers(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in record.items()
            if k != "epoch" and isinstance(v, int | float) and not isinstance(v, bool)}


def _log_epochs(mlflow, log_jsonl: Path) -> None:  # noqa: ANN001
    """Every numeric field of each JSONL epoch line as a metric at step = epoch."""
    if log_jsonl.is_file():
        for line in log_jsonl.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            mlflow.log_metrics(_numbers(record), step=int(record.get("epoch", 0)))


def log_run(uri: str | None, experiment: str, run_name: str, params: Mapping[str, Any], log_jsonl: Path,
            onnx_path: Path, metrics: Mapping[str, float]) -> str:
    """Log one experiment run: flattened params, per-epoch metrics, extra scalar metrics, and the
    exported ONNX model under `model/` with the onnx flavor and its signature. Returns the run id."""
    mlflow = connect(uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name) as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params({k: str(v) for k, v in _flatten(params).items()})
        _log_epochs(mlflow, log_jsonl)
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        model_dir = save_onnx_model(onnx_path, Path(tmp) / "model")
        mlflow.log_artifacts(str(model_dir), artifact_path="model")
        return run.info.run_id


def log_training_run(uri: str | None, config: Any, out: Path, experiment: str = TRAIN_EXPERIMENT) -> str:
    """Log a finished `fusionguard train` run: the config as params, the per-epoch log as metrics,
    the test metrics of result.json as `test.*`, and the checkpoint files as artifacts under
    `checkpoint/` (export it to get an ONNX model for the registry). Returns the run id."""
    mlflow = connect(uri)
    mlflow.set_experiment(experiment)
    out = Path(out)
    with mlflow.start_run(run_name=f"{config.variant}-s{config.seed}") as run:
        mlflow.log_params({k: str(v) for k, v in _flatten(config.to_dict()).items()})
        mlflow.set_tags({"fusionguard.variant": config.variant, "fusionguard.config_sha256": config.sha256()})
        _log_epochs(mlflow, out / "train_log.jsonl")
        result_file = out / "result.json"
        if result_file.is_file():
            result = json.loads(result_file.read_text(encoding="utf-8"))
            mlflow.log_metrics(_numbers({k: v for k, v in (result.get("test") or {}).items() if v is not None}, "test."))
            mlflow.log_metrics(_numbers({k: result[k] for k in ("best_val_ndcg", "train_seconds", "examples_per_s") if k in result}))
        for name in CHECKPOINT_FILES:
            if (out / name).is_file():
                mlflow.log_artifact(str(out / name), artifact_path="checkpoint")
        return run.info.run_id
