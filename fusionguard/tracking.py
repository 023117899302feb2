"""MLflow as teams use it: ONNX models with the `mlflow.onnx` flavor and a signature from the
modality contract, and the tracking URI from an option or `MLFLOW_TRACKING_URI`.

mlflow (the `tracking` extra: mlflow-skinny) is imported only when a function here runs; without
it `require_mlflow` raises a ConfigError (exit 2) that says what to install. Used by training's run
logging and by the gate's promotion into an MLflow Model Registry.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from fusionguard.contract import ModelContract, load_contract
from fusionguard.errors import ConfigError, InvalidInputError

MODEL_FILE = "model.onnx"  # what mlflow.onnx names the model inside a saved MLflow model


def require_mlflow(option: str = "--mlflow-uri"):  # noqa: ANN201 - the mlflow module
    """The mlflow module, or a ConfigError (exit 2) naming the extra to install."""
    try:
        import mlflow
        import mlflow.onnx  # noqa: F401 - the flavor needs pandas too (part of the extra)
    except ModuleNotFoundError as err:
        raise ConfigError(option, [f"MLflow needs the 'tracking' extra (missing '{err.name}'): pip install 'fusionguard[tracking]'"]) from None
    return mlflow


def tracking_uri(uri: str | None, option: str = "--mlflow-uri") -> str:
    """The tracking URI to use: `uri`, else MLFLOW_TRACKING_URI; a ConfigError when neither is set
    (MLflow's own fallback, ./mlruns in the working directory, is never what a pipeline wants)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ConfigError(option, [f"no MLflow tracking server given: pass {option} URI or set MLFLOW_TRACKING_URI"])
    return uri


def connect(uri: str | None, option: str = "--mlflow-uri"):  # noqa: ANN201 - the mlflow module
    """Import mlflow and point it at the tracking URI (option or MLFLOW_TRACKING_URI)."""
    mlflow = require_mlflow(option)
    uri = tracking_uri(uri, option)
    if "://" not in uri or uri.startswith("file:"):
        # MLflow >= 3 refuses the filesystem store unless opted in; a local path was asked for explicitly.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(uri)
    return mlflow


def onnx_signature(contract: ModelContract):  # noqa: ANN201 - mlflow.models.ModelSignature
    """The MLflow signature of a model: one tensor per contract input, (-1, *shape) in its dtype,
    and the (-1,) float32 score (plus the attention output when the contract declares one)."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    inputs = Schema([TensorSpec(np.dtype(s.dtype), (-1, *s.shape), s.name) for s in contract.inputs])
    outputs = [TensorSpec(np.dtype("float32"), (-1,), contract.score_output)]
    if contract.attention_output and contract.attention_heads and contract.n_keys:
        outputs.append(TensorSpec(np.dtype("float32"), (-1, contract.attention_heads, contract.n_keys), contract.attention_output))
    return ModelSignature(inputs=inputs, outputs=Schema(outputs))


def _pip_requirements() -> list[str]:
    from importlib import metadata

    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            return [f"onnxruntime=={metadata.version(dist)}", f"onnx=={metadata.version('onnx')}"]
        except metadata.PackageNotFoundError:
            continue
    return ["onnxruntime", "onnx"]


def save_onnx_model(onnx_path: str | Path, dest: str | Path, contract: ModelContract | None = None,
                    metadata: dict[str, Any] | None = None) -> Path:
    """Write `dest` as an MLflow model directory (MLmodel with the onnx and python_function flavors,
    the signature, requirements) whose model.onnx is a byte-for-byte copy of `onnx_path`.

    mlflow.onnx re-serializes the proto it is given; the copy afterwards keeps the file the gate
    hashed, so the registry holds exactly the gated model.

    Raises:
        InvalidInputError: the model is missing or unreadable, or lacks a contract and none is given.
    """
    import onnx

    mlflow = require_mlflow()
    onnx_path, dest = Path(onnx_path), Path(dest)
    if not onnx_path.is_file():
        raise InvalidInputError(f"model {onnx_path} does not exist; check the path")
    contract = contract or load_contract(onnx_path)
    try:
        proto = onnx.load(str(onnx_path))
    except Exception as err:  # noqa: BLE001 - onnx raises DecodeError, OSError, ... for a bad file
        raise InvalidInputError(f"model {onnx_path} is not a readable ONNX model ({type(err).__name__})") from None
    with warnings.catch_warnings():
        # mlflow.pyfunc's first import warns about its own type hints (noise a user cannot act on)
        warnings.filterwarnings("ignore", message=".*Any type hint is inferred as AnyType", category=UserWarning)
        mlflow.onnx.save_model(
            proto, str(dest), signature=onnx_signature(contract), save_as_external_data=False,
            pip_requirements=_pip_requirements(), metadata=metadata,
        )
    shutil.copyfile(onnx_path, dest / MODEL_FILE)
    return dest
