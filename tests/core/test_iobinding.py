"""The CUDA path (fusionguard.iobinding) against fakes: no GPU is available to these tests.

A fake ONNX Runtime module offers a CUDA EP device with host-accessible (pinned) memory and
OrtValues backed by numpy; a fake CUDA session runs the real model on a CPU session behind an
I/O binding. What is checked: inputs are staged in pinned buffers (reused for a repeated shape),
outputs are bound on the device and copied back, the scores equal the CPU session's, and the
unpinned fallback when the build offers no pinned memory. `--device cuda` without a usable GPU
fails fast with exit 2.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

import fusionguard.iobinding as iob
import fusionguard.session as session_mod
from fusionguard import toymodels
from fusionguard.scorer import CPU, CUDA, Mask, Scorer

PINNED = object()  # the fake OrtMemoryInfo of pinned host memory
_CPU_SESSION = ort.InferenceSession  # the real one (tests replace ort.InferenceSession)


class FakeOrtValue:
    def __init__(self, array: np.ndarray, where: str) -> None:
        self.array, self.where = array, where
        self.updates = 0

    @classmethod
    def ortvalue_from_shape_and_type(cls, shape, element_type, memory_info=None):
        assert memory_info is PINNED
        return cls(np.zeros(shape, element_type), "pinned")

    @classmethod
    def ortvalue_from_numpy(cls, array, device_type, device_id):
        return cls(np.array(array), f"{device_type}:{device_id}")

    def update_inplace(self, array) -> None:
        self.array[...] = array
        self.updates += 1


class FakeDevice:
    def __init__(self, ep_name: str) -> None:
        self.ep_name = ep_name

    def memory_info(self, memory_type):
        return PINNED if memory_type == "HOST_ACCESSIBLE" else None


class FakeOrt:
    """The slice of the onnxruntime module that iobinding uses."""

    OrtValue = FakeOrtValue

    class OrtDeviceMemoryType:
        HOST_ACCESSIBLE = "HOST_ACCESSIBLE"

    def __init__(self, pinned: bool = True) -> None:
        if not pinned:
            self.get_ep_devices = None

    def get_ep_devices(self):
        return [FakeDevice(CPU), FakeDevice(CUDA)]


class FakeOrtNeedsRegistration(FakeOrt):
    """onnxruntime-gpu 1.31 as seen on an H200: the CUDA EP device is listed only after the
    provider's library is registered."""

    def __init__(self, capi_dir, ship_library: bool = True) -> None:
        self.__file__ = str(capi_dir.parent / "__init__.py")
        capi_dir.mkdir(parents=True, exist_ok=True)
        if ship_library:
            (capi_dir / iob.CUDA_EP_LIBRARY).write_bytes(b"")
        self.registered: list[tuple[str, str]] = []

    def register_execution_provider_library(self, name, path) -> None:
        self.registered.append((name, path))

    def get_ep_devices(self):
        return [FakeDevice(CPU)] + ([FakeDevice(CUDA)] if self.registered else [])


def test_pinned_memory_after_registering_the_cuda_library(tmp_path):
    fake = FakeOrtNeedsRegistration(tmp_path / "onnxruntime" / "capi")
    assert iob.pinned_memory_info(fake) is PINNED
    assert fake.registered == [(iob.CUDA_EP_REGISTRATION, str(tmp_path / "onnxruntime" / "capi" / iob.CUDA_EP_LIBRARY))]
    assert iob.pinned_memory_info(FakeOrt()) is PINNED  # listed already: nothing registered
    no_library = FakeOrtNeedsRegistration(tmp_path / "other" / "capi", ship_library=False)
    assert iob.pinned_memory_info(no_library) is None and no_library.registered == []


def test_a_pinned_buffer_that_cannot_be_allocated_falls_back_to_unpinned(fusion, feeds, caplog):
    class BrokenPinned(FakeOrt):
        class OrtValue(FakeOrtValue):
            @classmethod
            def ortvalue_from_shape_and_type(cls, shape, element_type, memory_info=None):
                raise RuntimeError("Unsupported device type")

    session = FakeCudaSession(fusion)
    with caplog.at_level(logging.WARNING, logger="fusionguard.iobinding"):
        binding = iob.CudaIOBinding(session, ["score", "attention"], ort_module=BrokenPinned())
    assert not binding.pinned and "cannot allocate" in caplog.text
    got = binding.run(feeds)
    np.testing.assert_array_equal(got[0], session.cpu.run(["score"], feeds)[0])
    assert {v.where for v in session.bindings[0].inputs.values()} == {"cuda:0"}


class FakeBinding:
    def __init__(self, session) -> None:
        self.session = session
        self.inputs: dict[str, FakeOrtValue] = {}
        self.outputs: list[tuple[str, str, int]] = []
        self.results: list[np.ndarray] | None = None

    def bind_ortvalue_input(self, name, value) -> None:
        self.inputs[name] = value

    def bind_output(self, name, device_type, device_id) -> None:
        self.outputs.append((name, device_type, device_id))

    def copy_outputs_to_cpu(self):
        return self.results


class FakeCudaSession:
    """A 'CUDA' session: runs the model on a real CPU session, only through I/O binding."""

    def __init__(self, model_path) -> None:
        self.cpu = _CPU_SESSION(str(model_path), providers=[CPU])
        self.bindings: list[FakeBinding] = []

    def get_providers(self):
        return [CUDA, CPU]

    def io_binding(self):
        self.bindings.append(FakeBinding(self))
        return self.bindings[-1]

    def run_with_iobinding(self, binding) -> None:
        feeds = {name: value.array for name, value in binding.inputs.items()}
        binding.results = self.cpu.run([name for name, _, _ in binding.outputs], feeds)

    def run(self, *args, **kwargs):
        raise AssertionError("a CUDA scorer must go through I/O binding, not session.run")


@pytest.fixture(scope="module")
def fusion(tmp_path_factory):
    return toymodels.save(toymodels.build_fusion_model(1.0), tmp_path_factory.mktemp("m") / "fusion.onnx")


@pytest.fixture(scope="module")
def feeds():
    return toymodels.make_toy_dataset(n_queries=4, n_candidates=5, seed=1).feeds


def test_inputs_staged_in_reused_pinned_buffers_outputs_bound_on_the_device(fusion, feeds):
    session = FakeCudaSession(fusion)
    binding = iob.CudaIOBinding(session, ["score", "attention"], device_id=0, ort_module=FakeOrt())
    assert binding.pinned
    want = session.cpu.run(["score", "attention"], feeds)
    for _ in range(2):
        got = binding.run(feeds)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
    first, second = session.bindings
    assert {v.where for v in first.inputs.values()} == {"pinned"}
    assert all(first.inputs[k] is second.inputs[k] for k in feeds)  # same shape: the same pinned buffers
    assert all(v.updates == 2 for v in second.inputs.values())
    assert second.outputs == [("score", "cuda", 0), ("attention", "cuda", 0)]
    half = {k: v[:7] for k, v in feeds.items()}  # a new shape gets its own buffers
    binding.run(half)
    assert all(session.bindings[2].inputs[k] is not first.inputs[k] for k in feeds)


def test_at_most_max_shapes_buffer_sets_are_kept(fusion, feeds):
    binding = iob.CudaIOBinding(FakeCudaSession(fusion), ["score"], ort_module=FakeOrt(), max_shapes=2)
    for n in (3, 4, 5, 4):
        binding.run({k: v[:n] for k, v in feeds.items()})
    assert [key[0][1][0] for key in binding._buffers] == [5, 4]  # least recently used shape dropped


def test_without_pinned_memory_inputs_are_copied_to_the_device_unpinned(fusion, feeds, caplog):
    session = FakeCudaSession(fusion)
    with caplog.at_level(logging.WARNING, logger="fusionguard.iobinding"):
        binding = iob.CudaIOBinding(session, ["score"], ort_module=FakeOrt(pinned=False))
    assert not binding.pinned and "unpinned" in caplog.text
    got = binding.run(feeds)[0]
    np.testing.assert_array_equal(got, session.cpu.run(["score"], feeds)[0])
    assert {v.where for v in session.bindings[0].inputs.values()} == {"cuda:0"}


def test_a_cuda_scorer_scores_through_io_binding_like_the_cpu(monkeypatch, fusion, feeds):
    monkeypatch.setattr(session_mod.ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(session_mod.ort, "InferenceSession", lambda model, sess_options=None, providers=None: FakeCudaSession(model))
    monkeypatch.setattr(iob, "ort", FakeOrt())
    cuda = Scorer(fusion, device="cuda")
    monkeypatch.undo()
    cpu = Scorer(fusion, device="cpu")
    assert cuda.provider == CUDA and cuda._binding is not None and cuda._binding.pinned
    masks = (Mask(), Mask(frozenset({"visual"})))
    for got, want in zip(cuda.run(feeds, masks), cpu.run(feeds, masks)):
        np.testing.assert_array_equal(got.score, want.score)
        np.testing.assert_array_equal(got.attention, want.attention)
    merged = cuda.run_many([(feeds, masks), ({k: v[:3] for k, v in feeds.items()}, (Mask(),))])
    np.testing.assert_array_equal(merged[1][0].score, cpu.run({k: v[:3] for k, v in feeds.items()})[0].score)


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="a CUDA provider is installed here")
def test_serve_device_cuda_without_a_gpu_fails_fast_with_exit_2(fusion):
    r = subprocess.run(
        [sys.executable, "-m", "fusionguard.cli", "monitor", "serve", "--model", str(fusion), "--device", "cuda",
         "--port", "1"],
        capture_output=True, timeout=60,
    )
    assert r.returncode == 2
    assert b"device 'cuda' was requested" in r.stderr and b"--device cpu" in r.stderr and b"Traceback" not in r.stderr
