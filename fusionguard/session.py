"""The ONNX Runtime session behind the scorer: provider choice, session creation, ORT's errors.

`select_providers` turns a device name (`fusionguard.devices.DEVICES`) into the provider list;
`make_session` opens a session on it, falling back from an unusable CUDA provider to the CPU
unless CUDA was required.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from fusionguard.devices import DEVICES
from fusionguard.errors import InvalidInputError

logger = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

__all__ = ["CPU", "CUDA", "ORT_ERRORS", "file_sha256", "make_session", "select_providers"]

# The exceptions ONNX Runtime raises from C++ (they derive from Exception, not RuntimeError).
ORT_ERRORS: tuple[type[BaseException], ...] = (RuntimeError,) + tuple(
    getattr(_ort_state, name)
    for name in (
        "Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError", "RuntimeException",
        "InvalidProtobuf", "ModelLoaded", "NotImplemented", "InvalidGraph", "EPFail",
    )
    if isinstance(getattr(_ort_state, name, None), type)
)


def select_providers(device: str = "auto") -> list[str]:
    """The provider list to ask ONNX Runtime for.

    Args:
        device: "auto" (CUDA when onnxruntime-gpu is installed and sees a GPU, else CPU),
            "cpu", or "cuda" (CUDA required).
    Raises:
        InvalidInputError: an unknown device, or "cuda" when the CUDA provider is unavailable.
    """
    if device not in DEVICES:
        raise InvalidInputError(f"device '{device}' is unknown; use one of {list(DEVICES)}")
    available = ort.get_available_providers()
    if device == "cpu":
        return [CPU]
    if CUDA in available:
        return [CUDA, CPU]
    if device == "cuda":
        raise InvalidInputError(
            f"device 'cuda' was requested but ONNX Runtime offers only {available}; install the 'gpu' extra "
            "(onnxruntime-gpu, never together with onnxruntime) on a machine with an NVIDIA GPU, or use --device cpu"
        )
    return [CPU]


def make_session(model: str | bytes, source: str, device: str, threads: int | None) -> ort.InferenceSession:
    providers = select_providers(device)
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(model, sess_options=options, providers=providers)
    except ORT_ERRORS as err:
        if providers[0] != CUDA:
            raise InvalidInputError(f"ONNX Runtime cannot load {source}: {err}") from None
        if device == "cuda":
            raise InvalidInputError(
                f"device 'cuda' was requested but ONNX Runtime could not create a CUDA session for {source} ({err}); "
                "check the CUDA/cuDNN libraries that onnxruntime-gpu needs, or use --device cpu"
            ) from None
        logger.warning("CUDA session for %s failed (%s); falling back to the CPU provider", source, err)
        return make_session(model, source, "cpu", threads)
    got = session.get_providers()
    if providers[0] == CUDA and (not got or got[0] != CUDA):
        if device == "cuda":
            raise InvalidInputError(
                f"device 'cuda' was requested but the session for {source} got {got}; check the CUDA/cuDNN "
                "libraries that onnxruntime-gpu needs, or use --device cpu"
            )
        logger.warning("CUDA provider is installed but unusable for %s (session got %s); using the CPU", source, got)
    return session


def file_sha256(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
