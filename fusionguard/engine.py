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

__all__ = ["ENGINES", "EngineConfig", "connect", "engine_options", "get", "pool_size", "require_engine"]


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
    """Fail early (exit 2, before anything is scored or written) when Ray is asked for but missing."""
    if engine is not None and engine.engine == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise InvalidInputError("--engine ray needs Ray: pip install 'fusionguard[ray]'")


def connect(address: str | None) -> Any:
    """The `ray` module, joined to `address` (or to a new local Ray) unless already connected."""
    try:
        import ray
    except ImportError:
        raise InvalidInputError("--engine ray needs Ray: pip install 'fusionguard[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return ray


def pool_size(ray: Any, engine: EngineConfig, device: str) -> int:
    """Actors in the pool: `engine.workers`, else one per CPU (one per GPU on cuda) of the cluster."""
    if engine.workers is not None:
        return engine.workers
    resources = ray.cluster_resources()
    return max(1, int(resources.get("GPU" if device == "cuda" else "CPU", 1)))


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
