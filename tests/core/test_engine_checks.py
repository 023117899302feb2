"""The Ray engine fails fast with a clear message: an unreachable --ray-address (instead of Ray's
minutes of retries), cuda actors on a cluster without GPUs (instead of waiting forever)."""

from __future__ import annotations

import socket

import pytest

from fusionguard.engine import check_reachable
from fusionguard.errors import InvalidInputError


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("form", ["{}", "ray://{}"])
def test_an_unreachable_address_is_refused_quickly(form):
    address = form.format(f"127.0.0.1:{_closed_port()}")
    with pytest.raises(InvalidInputError, match="cannot reach the Ray cluster") as err:
        check_reachable(address, timeout=2.0)
    assert err.value.exit_code == 2


@pytest.mark.parametrize("address", ["127.0.0.1", "http://127.0.0.1:6379", "host:port", ":6379"])
def test_a_malformed_address_is_refused(address):
    with pytest.raises(InvalidInputError, match="is not HOST:PORT"):
        check_reachable(address)


def test_a_listening_address_passes_and_auto_is_left_to_ray():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_reachable(f"127.0.0.1:{server.getsockname()[1]}", timeout=2.0)
        check_reachable(f"ray://127.0.0.1:{server.getsockname()[1]}", timeout=2.0)
    check_reachable(None)
    check_reachable("auto")


def test_the_engine_check_refuses_an_unreachable_cluster_before_any_work():
    """`require_engine` runs before the gate, eval or replay reads or writes anything."""
    pytest.importorskip("ray")
    from fusionguard.engine import EngineConfig, require_engine

    with pytest.raises(InvalidInputError, match="cannot reach the Ray cluster"):
        require_engine(EngineConfig("ray", ray_address=f"127.0.0.1:{_closed_port()}"))
    require_engine(EngineConfig("ray"))  # a new local Ray: nothing to reach yet


class _FakeRay:
    def __init__(self, resources: dict) -> None:
        self.resources = resources

    def cluster_resources(self) -> dict:
        return self.resources


def test_cuda_actors_on_a_cluster_without_gpus_are_refused():
    """They would wait forever for a GPU; the pool size says so first."""
    from fusionguard.engine import EngineConfig, pool_size

    with pytest.raises(InvalidInputError, match="has none"):
        pool_size(_FakeRay({"CPU": 16.0}), EngineConfig("ray"), "cuda")
    with pytest.raises(InvalidInputError, match="has none"):
        pool_size(_FakeRay({"CPU": 16.0}), EngineConfig("ray", workers=2), "cuda")
    assert pool_size(_FakeRay({"CPU": 16.0, "GPU": 4.0}), EngineConfig("ray"), "cuda") == 4
    assert pool_size(_FakeRay({"CPU": 16.0}), EngineConfig("ray"), "cpu") == 16
    assert pool_size(_FakeRay({"CPU": 16.0}), EngineConfig("ray", workers=3), "cpu") == 3
