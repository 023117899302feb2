"""Which engine scores the eval set: the local streaming engine or Ray.

`local` (default) streams whole-query batches from a Parquet file and scores them on `workers`
ONNX Runtime sessions in this process (gate/streaming.py). `ray` cuts the same batches on the
driver and scores them in an actor pool of ONNX Runtime scorers on a Ray cluster
(gate/engine_ray.py); the driver assembles the same partials with the same code, so per-query
values and verdicts are equal.
"""

from __future__ import annotations

from dataclasses import dataclass

import click

from fusionguard.errors import InvalidInputError

ENGINES = ("local", "ray")

__all__ = ["ENGINES", "EngineConfig", "engine_options", "require_engine"]


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


def engine_options(fn):  # noqa: ANN001, ANN201
    """The --engine, --workers and --ray-address options of gate, eval and monitor replay."""
    fn = click.option("--ray-address", default=None,
                      help="Ray cluster to join with --engine ray ('auto', ray://HOST:10001); default: a local Ray.")(fn)
    fn = click.option("--workers", type=int, default=None,
                      help="Batches scored in parallel (local: ONNX Runtime sessions, default one per CPU; ray: actors).")(fn)
    fn = click.option("--engine", type=click.Choice(ENGINES), default="local", show_default=True,
                      help="local: stream the Parquet file on this machine; ray: an actor pool of scorers on a Ray cluster.")(fn)
    return fn
