"""Which engine scores a Parquet dataset: the local streaming engine or Ray.

`local` (default) streams whole-query batches from a Parquet file and scores them on `workers`
ONNX Runtime sessions in this process. `ray` reads them with Ray Data and scores them in an
actor pool of ONNX Runtime scorers on a Ray cluster (fusionguard/raydata.py; gate/engine_ray.py
for `gate` and `eval`, monitor/replay_ray.py for
`monitor replay`); the driver assembles the results with the local engine's code, so the
numbers are equal. The gate and the monitor share these options, so they live in the core;
Ray is imported only when the Ray engine runs (the `ray` extra).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click

from fusionguard.errors import InvalidInputError

ENGINES = ("local", "ray")

__all__ = [
    "CONNECT_TIMEOUT_S", "ENGINES", "EngineConfig", "check_reachable", "connect", "engine_options", "get", "pool_size",
    "require_engine",
]


@dataclass(frozen=True)
class EngineConfig:
    engine: str = "local"  # "local" | "ray"
    workers: int | None = None  # local: parallel batches (None: one per CPU); ray: actors (None: the cluster's CPUs)
    ray_address: str | None = None  # None starts a local Ray; "auto" or ray://host:10001 joins a cluster

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise InvalidInputError(f"engine '{self.engine}' is unknown; use one of {list(ENGINES)}")
        if self.workers is not None and self.workers < 1:
            raise InvalidInputError(f"workers must be >= 1, got {self.workers}")
        if self.ray_address is not None and self.engine != "ray":
            raise InvalidInputError("--ray-address needs --engine ray")


def require_engine(engine: EngineConfig | None) -> None:
    """Fail early (exit 2, before anything is scored or written) when Ray is asked for but
    missing, or --ray-address is malformed or unreachable."""
    if engine is not None and engine.engine == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise InvalidInputError("--engine ray needs Ray: pip install 'fusionguard[ray]'")
        check_reachable(engine.ray_address)


CONNECT_TIMEOUT_S = 10.0  # how long --ray-address may take to accept a TCP connection


def connect(address: str | None) -> Any:
    """The `ray` module, joined to `address` (or to a new local Ray) unless already connected.

    Raises:
        InvalidInputError: Ray is missing, or `address` is malformed or not reachable (checked
            with a plain TCP connection first: Ray itself retries an unreachable head for minutes).
    """
    try:
        import ray
    except ImportError:
        raise InvalidInputError("--engine ray needs Ray: pip install 'fusionguard[ray]'") from None
    if not ray.is_initialized():
        check_reachable(address)
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        except (ConnectionError, TimeoutError, ValueError) as err:
            raise InvalidInputError(
                f"cannot join the Ray cluster at {address or 'a new local Ray'} ({type(err).__name__}: "
                f"{' '.join(str(err).split())[:300]}); check --ray-address"
            ) from None
    return ray


def check_reachable(address: str | None, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast unless `address` (HOST:PORT or ray://HOST:PORT; None or "auto" are not checked
    here) accepts a TCP connection within `timeout` seconds."""
    if address is None or address in ("auto", "local"):
        return
    scheme, _, rest = address.rpartition("://")
    host, _, port = rest.rpartition(":")
    if scheme not in ("", "ray") or not host or not port.isdigit():
        raise InvalidInputError(
            f"--ray-address '{address}' is not HOST:PORT, ray://HOST:PORT or auto (e.g. 10.0.0.5:6379 for a head "
            "node's GCS, ray://10.0.0.5:10001 for Ray Client)"
        )
    import socket

    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise InvalidInputError(
            f"cannot reach the Ray cluster at {address} within {timeout:g} s ({err.strerror or err}); check "
            "--ray-address: the head node's GCS port (usually 6379) or ray://HOST:10001 for Ray Client"
        ) from None


def pool_size(ray: Any, engine: EngineConfig, device: str) -> int:
    """Actors in the pool: `engine.workers`, else one per CPU (one per GPU on cuda) of the cluster.

    Raises:
        InvalidInputError: cuda actors on a cluster without GPUs (they would wait forever for one).
    """
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if device == "cuda" and gpus < 1:
        raise InvalidInputError(
            "--device cuda with --engine ray needs GPU workers, and this Ray cluster has none "
            f"(resources: {int(resources.get('CPU', 0))} CPUs, 0 GPUs); use --device cpu or a cluster with GPUs"
        )
    if engine.workers is not None:
        return engine.workers
    return max(1, gpus if device == "cuda" else int(resources.get("CPU", 1)))


def get(ray: Any, ref: Any) -> Any:
    """`ray.get(ref)`; an actor's FusionGuardError comes back as itself (its message and exit code)."""
    from fusionguard.errors import FusionGuardError

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, FusionGuardError):
            raise err.cause from None
        raise


def engine_options(fn):  # noqa: ANN001, ANN201
    """The --engine, --workers and --ray-address options of gate, eval and monitor replay."""
    fn = click.option("--ray-address", default=None,
                      help="Ray cluster to join with --engine ray ('auto', ray://HOST:10001); default: a local Ray.")(fn)
    fn = click.option("--workers", type=int, default=None,
                      help="Batches scored in parallel (local: ONNX Runtime sessions, default one per CPU; ray: actors).")(fn)
    fn = click.option("--engine", type=click.Choice(ENGINES), default="local", show_default=True,
                      help="local: stream the Parquet file on this machine; ray: Ray Data reads it and an actor pool "
                           "of scorers on a Ray cluster scores it.")(fn)
    return fn
