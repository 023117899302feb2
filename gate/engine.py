"""The engine options of `gate` and `eval` (defined in the core, fusionguard/engine.py, because
`monitor replay` takes them too): `local` streams the eval set and scores it on this machine
(gate/streaming.py); `ray` has an actor pool on a Ray cluster read and score it
(gate/engine_ray.py). Both give the same per-query values and verdicts."""

from fusionguard.engine import ENGINES, EngineConfig, engine_options, require_engine

__all__ = ["ENGINES", "EngineConfig", "engine_options", "require_engine"]
