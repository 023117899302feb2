"""The CUDA path of the scorer: ONNX Runtime I/O binding with pinned host staging buffers.

`session.run(feeds)` on a CUDA session copies every input from pageable numpy memory (the driver
stages it through a bounce buffer) and copies every output back the same way. With I/O binding
the inputs are first written into page-locked ("pinned", HOST_ACCESSIBLE) host buffers, from
which the device copy is one direct DMA; the outputs are bound on the device and copied back to
the host once, after the run. The staging buffers are reused across calls of the same shapes
(the monitor sends the same request shape again and again); a new shape gets new buffers, at
most `max_shapes` sets are kept.

Pinned memory comes from the CUDA execution provider's device (`onnxruntime.get_ep_devices()`,
`memory_info(HOST_ACCESSIBLE)`). onnxruntime-gpu 1.31 lists only the CPU there until the CUDA
provider's library is registered as an EP library (seen on an H200: benchmarks/results/
serving_gpu_h200.json ran unpinned for that reason), so when no CUDA device is listed the
library shipped in the package (`capi/libonnxruntime_providers_cuda.so`) is registered under
`CUDA_EP_REGISTRATION` and the devices are read again. Where this ONNX Runtime build still does
not offer pinned memory, inputs are bound as device OrtValues copied from the numpy arrays
(still one copy per input, no pinning) and a warning says so once.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

logger = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CUDA_EP_REGISTRATION = "fusionguard-cuda"  # the name the CUDA provider's library is registered under
CUDA_EP_LIBRARY = "libonnxruntime_providers_cuda.so"


def _cuda_device(get_devices: Any) -> Any | None:
    return next((d for d in get_devices() if d.ep_name == CUDA), None)


def _register_cuda_library(ort_module: Any) -> bool:
    """Register the package's CUDA provider library as an EP library; False where there is none."""
    register = getattr(ort_module, "register_execution_provider_library", None)
    library = os.path.join(os.path.dirname(getattr(ort_module, "__file__", "") or ""), "capi", CUDA_EP_LIBRARY)
    if register is None or not os.path.isfile(library):
        return False
    register(CUDA_EP_REGISTRATION, library)
    return True


def pinned_memory_info(ort_module: Any = None) -> Any | None:
    """The OrtMemoryInfo of the CUDA provider's host-accessible (pinned) memory, or None."""
    ort_module = ort_module or ort
    get_devices = getattr(ort_module, "get_ep_devices", None)
    memory_type = getattr(getattr(ort_module, "OrtDeviceMemoryType", None), "HOST_ACCESSIBLE", None)
    if get_devices is None or memory_type is None:
        return None
    try:
        device = _cuda_device(get_devices)
        if device is None and _register_cuda_library(ort_module):
            device = _cuda_device(get_devices)
        if device is not None:
            return device.memory_info(memory_type)
    except Exception as err:  # noqa: BLE001 - an EP-device query failure only costs the pinning
        logger.warning("cannot query the CUDA provider's pinned memory (%s); inputs are staged unpinned", err)
    return None


class CudaIOBinding:
    """Runs a CUDA `InferenceSession` through I/O binding. Thread-safe (one run at a time: the
    staging buffers are shared)."""

    def __init__(
        self,
        session: Any,
        output_names: Sequence[str],
        device_id: int = 0,
        *,
        ort_module: Any = None,  # onnxruntime (tests pass a fake)
        max_shapes: int = 8,
    ) -> None:
        self._session = session
        self._outputs = list(output_names)
        self._device_id = device_id
        self._ort = ort_module or ort
        self._pinned = pinned_memory_info(self._ort)
        if self._pinned is not None:
            try:  # one tiny pinned buffer first: a failure here costs the pinning, not a request
                self._ort.OrtValue.ortvalue_from_shape_and_type((1,), np.float32, memory_info=self._pinned)
            except Exception as err:  # noqa: BLE001
                logger.warning("cannot allocate the CUDA provider's pinned memory (%s); inputs are staged unpinned", err)
                self._pinned = None
        if self._pinned is None:
            logger.warning("pinned host memory is unavailable in this ONNX Runtime build; CUDA inputs are copied unpinned")
        self._buffers: OrderedDict[tuple, dict[str, Any]] = OrderedDict()  # feed shapes -> staging OrtValues
        self._max_shapes = max_shapes
        self._lock = threading.Lock()

    @property
    def pinned(self) -> bool:
        return self._pinned is not None

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs (in `output_names` order) as host numpy arrays."""
        with self._lock:
            binding = self._session.io_binding()
            staged = self._stage(feeds)
            for name, value in staged.items():
                binding.bind_ortvalue_input(name, value)
            for name in self._outputs:
                binding.bind_output(name, "cuda", self._device_id)
            self._session.run_with_iobinding(binding)
            return list(binding.copy_outputs_to_cpu())

    def _stage(self, feeds: Mapping[str, np.ndarray]) -> dict[str, Any]:
        OrtValue = self._ort.OrtValue  # noqa: N806 - a class
        arrays = {name: np.ascontiguousarray(x) for name, x in feeds.items()}
        if self._pinned is None:
            return {name: OrtValue.ortvalue_from_numpy(x, "cuda", self._device_id) for name, x in arrays.items()}
        key = tuple((name, x.shape, x.dtype.str) for name, x in arrays.items())
        buffers = self._buffers.get(key)
        if buffers is None:
            buffers = {
                name: OrtValue.ortvalue_from_shape_and_type(x.shape, x.dtype.type, memory_info=self._pinned)
                for name, x in arrays.items()
            }
            self._buffers[key] = buffers
            while len(self._buffers) > self._max_shapes:
                self._buffers.popitem(last=False)
        else:
            self._buffers.move_to_end(key)
        for name, x in arrays.items():
            buffers[name].update_inplace(x)
        return buffers
