"""Running the monitor under uvicorn.

Graceful shutdown: on SIGTERM / SIGINT uvicorn stops accepting connections, lets the requests in
flight finish (up to `graceful_timeout_s`), then runs the app's lifespan shutdown, which drains
the telemetry queue. SIGHUP reloads the registry's current model (see `monitor.app`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import uvicorn
from prometheus_client import CollectorRegistry

from monitor.app import AppConfig, MonitorApp
from monitor.service import ModelService, ServiceConfig
from monitor.telemetry import TelemetryConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeConfig:
    service: ServiceConfig
    app: AppConfig = field(default_factory=AppConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    host: str = "127.0.0.1"  # loopback unless told otherwise
    port: int = 8000
    graceful_timeout_s: float = 30.0  # how long shutdown waits for requests in flight
    log_level: str = "warning"


@dataclass(frozen=True)
class ServeResult:
    host: str
    port: int
    exit_code: int = 0

    def summary(self) -> str:
        return f"monitor on http://{self.host}:{self.port} stopped"


def build(config: ServeConfig, registry: CollectorRegistry | None = None) -> tuple[MonitorApp, uvicorn.Server]:
    """The app and an unstarted uvicorn server (tests run `server.run()` in a thread)."""
    service = ModelService(config.service)
    registry = registry if registry is not None else CollectorRegistry()
    mapp = MonitorApp(service, registry, config=config.app, telemetry=config.telemetry)
    uv = uvicorn.Config(
        mapp.app,
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        lifespan="on",
        timeout_graceful_shutdown=int(config.graceful_timeout_s),
        access_log=False,
    )
    return mapp, uvicorn.Server(uv)


def serve(config: ServeConfig) -> ServeResult:
    """Serve until SIGTERM / SIGINT. Raises InvalidInputError when the model cannot be loaded."""
    mapp, server = build(config)
    state = mapp.service.state
    logger.warning(
        "serving '%s' version %s (%s) on http://%s:%d", mapp.service.name, state.version, state.scorer.provider,
        config.host, config.port,
    )
    server.run()
    return ServeResult(config.host, config.port)
