"""Running the monitor under uvicorn.

Graceful shutdown: on SIGTERM / SIGINT uvicorn stops accepting connections, lets the requests in
flight finish (up to `graceful_timeout_s`), then runs the app's lifespan shutdown, which drains
the telemetry queue. SIGHUP reloads the registry's current model (see `monitor.app`).

Logs go to stderr as `2026-01-01T12:00:00+0000 INFO monitor.server: ...` (uvicorn's own lines
too); the startup line is at INFO; uvicorn's access log is off unless `access_log` is set.
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

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_DATEFMT = "%Y-%m-%dT%H:%M:%S%z"


@dataclass(frozen=True)
class ServeConfig:
    service: ServiceConfig
    app: AppConfig = field(default_factory=AppConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    host: str = "127.0.0.1"  # loopback unless told otherwise
    port: int = 8000
    graceful_timeout_s: float = 30.0  # how long shutdown waits for requests in flight
    log_level: str = "info"  # one of LOG_LEVELS
    access_log: bool = False  # uvicorn's one line per HTTP request


@dataclass(frozen=True)
class ServeResult:
    host: str
    port: int
    exit_code: int = 0

    def summary(self) -> str:
        return f"monitor on http://{self.host}:{self.port} stopped"


def configure_logging(level: str) -> None:
    """Timestamped `LEVEL logger: message` lines on stderr for fusionguard and uvicorn alike."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, datefmt=LOG_DATEFMT, force=True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uv = logging.getLogger(name)
        uv.handlers.clear()  # uvicorn's own handlers would print a second, untimestamped line
        uv.propagate = True


def build(config: ServeConfig, registry: CollectorRegistry | None = None) -> tuple[MonitorApp, uvicorn.Server]:
    """The app and an unstarted uvicorn server (tests run `server.run()` in a thread)."""
    service = ModelService(config.service)
    registry = registry if registry is not None else CollectorRegistry()
    mapp = MonitorApp(service, registry, config=config.app, telemetry=config.telemetry)
    uv = uvicorn.Config(
        mapp.app,
        host=config.host,
        port=config.port,
        log_config=None,  # logging is configured by configure_logging (or the test harness)
        log_level=config.log_level,
        lifespan="on",
        timeout_graceful_shutdown=int(config.graceful_timeout_s),
        access_log=config.access_log,
    )
    return mapp, uvicorn.Server(uv)


def serve(config: ServeConfig) -> ServeResult:
    """Serve until SIGTERM / SIGINT. Raises InvalidInputError when the model cannot be loaded.

    A registry with nothing promoted yet is not an error: the server starts not-ready and
    becomes ready after a promotion plus a load (endpoint, SIGHUP or the registry poll).
    """
    configure_logging(config.log_level)
    mapp, server = build(config)
    if config.access_log:  # access lines are INFO; show them even when other logs are quieter
        logging.getLogger("uvicorn.access").setLevel(logging.INFO)
    state = mapp.service.state
    url = f"http://{config.host}:{config.port}"
    if state is None:
        logger.info("serving '%s' on %s: no model loaded yet, not ready", mapp.service.name, url)
    else:
        logger.info("serving '%s' version %s (%s) on %s", mapp.service.name, state.version, state.scorer.provider, url)
    server.run()
    return ServeResult(config.host, config.port)
