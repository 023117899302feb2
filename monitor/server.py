"""Running the monitor under uvicorn.

Graceful shutdown: on SIGTERM / SIGINT uvicorn stops accepting connections, lets the requests in
flight finish (up to `graceful_timeout_s`), then runs the app's lifespan shutdown, which drains
the telemetry queue. SIGHUP reloads the registry's current model (see `fusionguard.monitor.app`).

Workers (`workers` > 1): uvicorn's supervisor binds the port once and starts N worker processes
that accept on it, each with its own session, batcher and telemetry worker. Metrics use
prometheus_client's multiprocess mode: PROMETHEUS_MULTIPROC_DIR (a fresh temporary directory,
or the one the environment names, emptied at start) holds every worker's values and each
worker's /metrics merges all of them. Hot reload reaches every worker: SIGHUP to the supervisor
is forwarded to each worker (each reloads in place; one whose reload fails keeps serving its
version); the load / unload endpoints, answered by one worker, signal the supervisor (SIGHUP /
SIGUSR1), which forwards to all; the registry poll runs in every worker. SIGTERM / SIGINT to
the supervisor shut every worker down gracefully.

Logs go to stderr as `2026-01-01T12:00:00+0000 INFO fusionguard.monitor.server: ...` (uvicorn's own lines
too); the startup line is at INFO; uvicorn's access log is off unless `access_log` is set.
"""

from __future__ import annotations

import base64
import logging
import os
import pickle
import shutil
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from prometheus_client import CollectorRegistry
from uvicorn.supervisors import Multiprocess

from fusionguard.monitor.app import AppConfig, MonitorApp
from fusionguard.monitor.service import ModelService, ServiceConfig
from fusionguard.monitor.telemetry import TelemetryConfig

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is not installed: uvicorn's h11 protocol, as it comes
    HttpToolsProtocol = None

logger = logging.getLogger(__name__)

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_DATEFMT = "%Y-%m-%dT%H:%M:%S%z"
_CONFIG_ENV = "FUSIONGUARD_SERVE_CONFIG"  # the ServeConfig handed to worker processes (pickled, base64)
_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


# uvicorn stops reading a connection once 64 KiB of a request body wait for the app; a request
# of the benchmark's size (270 KB) then reaches the app in two pieces, a pause, a resume and one
# more wake-up of its task. The app reads every body whole (up to max_body_bytes) anyway.
BODY_HIGH_WATER = 1024 * 1024


if HttpToolsProtocol is not None:

    class BufferedBodyProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol, pausing reading past BODY_HIGH_WATER bytes of body, not 64 KiB."""

        def on_body(self, body: bytes) -> None:  # uvicorn 0.3x's on_body with the larger mark
            if (self.parser.should_upgrade() and self._should_upgrade()) or self.cycle.response_complete:
                return
            self.cycle.body += body
            if len(self.cycle.body) > BODY_HIGH_WATER:
                self.flow.pause_reading()
            self.cycle.message_event.set()


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
    workers: int = 1  # processes accepting on the port; > 1 uses prometheus_client's multiprocess mode


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
    return mapp, uvicorn.Server(_uvicorn_config(config, mapp.app))


def _uvicorn_config(config: ServeConfig, app) -> uvicorn.Config:  # noqa: ANN001 - ASGI app or import string
    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_config=None,  # logging is configured by configure_logging (or the test harness)
        log_level=config.log_level,
        lifespan="on",
        timeout_graceful_shutdown=int(config.graceful_timeout_s),
        access_log=config.access_log,
        factory=isinstance(app, str),
        http=BufferedBodyProtocol if HttpToolsProtocol is not None else "auto",
        workers=config.workers if isinstance(app, str) else 1,
    )


def serve(config: ServeConfig) -> ServeResult:
    """Serve until SIGTERM / SIGINT. Raises InvalidInputError when the model cannot be loaded.

    A registry with nothing promoted yet is not an error: the server starts not-ready and
    becomes ready after a promotion plus a load (endpoint, SIGHUP or the registry poll).
    """
    configure_logging(config.log_level)
    if config.workers > 1:
        return _serve_workers(config)
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


# ----- worker processes -----------------------------------------------------------------------

class _Supervisor(Multiprocess):
    """uvicorn's supervisor, except that SIGHUP / SIGUSR1 are passed on to every worker (reload /
    unload in place) instead of restarting the processes."""

    def _forward(self, sig: signal.Signals) -> None:
        for process in self.processes:
            if process.pid is not None:
                try:
                    os.kill(process.pid, sig)
                except ProcessLookupError:
                    pass  # exited meanwhile; the supervisor restarts it, and it loads the current model

    def handle_hup(self) -> None:
        logger.info("SIGHUP: reloading every worker")
        self._forward(signal.SIGHUP)

    def handle_usr1(self) -> None:
        logger.info("unload: forwarding to every worker")
        self._forward(signal.SIGUSR1)


def _serve_workers(config: ServeConfig) -> ServeResult:
    ModelService(config.service)  # fail fast (exit 2) on a bad model or option before any worker starts
    given = os.environ.get(_MULTIPROC_ENV)
    mp_dir = Path(given) if given else Path(tempfile.mkdtemp(prefix="fusionguard-metrics-"))
    mp_dir.mkdir(parents=True, exist_ok=True)
    for stale in mp_dir.glob("*.db"):  # values of an earlier run would be summed in
        stale.unlink()
    os.environ[_MULTIPROC_ENV] = str(mp_dir)
    os.environ[_CONFIG_ENV] = base64.b64encode(pickle.dumps(config)).decode("ascii")
    uv = _uvicorn_config(config, "fusionguard.monitor.server:worker_app")
    sock = uv.bind_socket()
    logger.info("serving '%s' on http://%s:%d with %d workers (metrics in %s)",
                config.service.name, config.host, config.port, config.workers, mp_dir)
    try:
        _Supervisor(uv, sockets=[sock]).run()
    finally:
        sock.close()
        if not given:
            shutil.rmtree(mp_dir, ignore_errors=True)
    return ServeResult(config.host, config.port)


def worker_app():  # noqa: ANN201 - the ASGI app
    """The app of one worker process (uvicorn's factory, run in each spawned worker)."""
    from prometheus_client import multiprocess

    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload before the lifespan starts must not kill it
    config: ServeConfig = pickle.loads(base64.b64decode(os.environ[_CONFIG_ENV]))  # noqa: S301 - our own parent's
    configure_logging(config.log_level)
    access = logging.getLogger("uvicorn.access")  # as serve() leaves it: on only when asked for
    access.propagate = config.access_log
    if config.access_log:
        access.setLevel(logging.INFO)
    exposition = CollectorRegistry()
    multiprocess.MultiProcessCollector(exposition)
    mapp = MonitorApp(
        ModelService(config.service), CollectorRegistry(), config=config.app, telemetry=config.telemetry,
        exposition=exposition, supervisor_pid=os.getppid(),
    )
    return mapp.app
