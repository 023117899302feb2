"""The Starlette application: Open Inference Protocol v2 REST endpoints plus /metrics.

Routes:
    GET  /v2/health/live, /v2/health/ready, /v2
    GET  /v2/models/{name}[/versions/{version}], /v2/models/{name}[/versions/{version}]/ready
    POST /v2/models/{name}[/versions/{version}]/infer     JSON tensors or binary-tensor extension
    POST /v2/repository/models/{name}/load                 hot reload of the current model
    GET  /metrics                                          Prometheus text exposition

Admission: at most `max_concurrency` inference requests are admitted at once (running or waiting
for one of `inference_threads` ONNX Runtime workers); the next one is answered 503 at once and
counted as `outcome="rejected"`. Bodies larger than `max_body_bytes` get 413 (reason
`body_too_large`); every other bad input gets 400 with `{"error": ...}` and a counted reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import anyio.to_thread
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fusionguard import __version__
from fusionguard.errors import FusionGuardError
from fusionguard.scorer import InvalidFeedsError
from monitor.metrics import UNKNOWN_MODEL, MonitorMetrics
from monitor.protocol import ProtocolError, decode_request, encode_response, tensor_metadata
from monitor.service import ModelService, ModelState, Scored
from monitor.telemetry import TelemetryConfig, TelemetryWorker

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AppConfig:
    max_concurrency: int = 64  # admitted inference requests (running + waiting); beyond: 503
    max_body_bytes: int = 32 * 1024 * 1024  # larger request bodies get 413
    inference_threads: int = 1  # concurrent ONNX Runtime calls (each may use several intra-op threads)
    handle_sighup: bool = True  # reload on SIGHUP (only possible when the server runs in the main thread)


def record_scored(m: MonitorMetrics, name: str, scored: Scored) -> None:
    """The request-path metrics of one successfully scored request (server and replay alike)."""
    m.inference_duration.labels(name).observe(scored.seconds)
    m.batch_size.labels(name).observe(scored.outputs[0].score.shape[0])
    if scored.telemetry:
        m.telemetry_requests.labels(name).inc()
    m.requests.labels(name, "ok").inc()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class MonitorApp:
    """Holds the service, metrics and worker; `app` is the ASGI application."""

    def __init__(
        self,
        service: ModelService,
        registry: CollectorRegistry,
        config: AppConfig = AppConfig(),
        telemetry: TelemetryConfig = TelemetryConfig(),
    ) -> None:
        self.service = service
        self.registry = registry
        self.metrics = MonitorMetrics.create(registry)
        self.worker = TelemetryWorker(service.name, self.metrics, service.shadow, telemetry)
        self.config = config
        self._inflight = 0
        self._limiter: anyio.CapacityLimiter | None = None
        self._publish_model(service.state, None)
        m = "/v2/models/{name}"
        v = "/v2/models/{name}/versions/{version}"
        routes = [
            Route("/v2/health/live", self.live),
            Route("/v2/health/ready", self.ready),
            Route("/v2", self.server_metadata),
            Route(m, self.model_metadata),
            Route(v, self.model_metadata),
            Route(m + "/ready", self.model_ready),
            Route(v + "/ready", self.model_ready),
            Route(m + "/infer", self.infer, methods=["POST"]),
            Route(v + "/infer", self.infer, methods=["POST"]),
            Route("/v2/repository/models/{name}/load", self.load, methods=["POST"]),
            Route("/metrics", self.metrics_endpoint),
        ]
        self.app = Starlette(
            routes=routes, lifespan=self._lifespan, exception_handlers={HTTPException: self._http_error}
        )

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        """Routing errors (unknown path 404, wrong method 405) in the OIP error shape."""
        status = getattr(exc, "status_code", 500)
        detail = getattr(exc, "detail", "") or "error"
        return _error(status, f"{request.method} {request.url.path}: {detail}")

    # ----- lifecycle -------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self._limiter = anyio.CapacityLimiter(self.config.inference_threads)
        self.worker.start()
        loop = asyncio.get_running_loop()
        hup = self.config.handle_sighup and threading.current_thread() is threading.main_thread()
        if hup:
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self._reload_logged()))
        self.metrics.model_ready.labels(self.service.name).set(1)
        try:
            yield
        finally:
            # uvicorn has already drained in-flight requests (graceful shutdown) when we get here.
            if hup:
                loop.remove_signal_handler(signal.SIGHUP)
            self.metrics.model_ready.labels(self.service.name).set(0)
            await anyio.to_thread.run_sync(self.worker.stop)

    def _publish_model(self, new: ModelState, old: ModelState | None) -> None:
        if old is not None:
            with contextlib.suppress(KeyError):
                self.metrics.model_info.remove(self.service.name, old.version, old.scorer.sha256, old.scorer.provider)
        self.metrics.model_info.labels(self.service.name, new.version, new.scorer.sha256, new.scorer.provider).set(1)

    async def reload(self) -> tuple[ModelState, bool]:
        old = self.service.state
        state, changed = await anyio.to_thread.run_sync(self.service.reload)
        if changed:
            self._publish_model(state, old)
        return state, changed

    async def _reload_logged(self) -> None:
        try:
            state, changed = await self.reload()
            logger.info("SIGHUP reload: %s (%s)", state.version, "changed" if changed else "unchanged")
        except FusionGuardError as err:
            logger.error("SIGHUP reload failed, still serving the previous model: %s", err)

    # ----- health and metadata ---------------------------------------------------------------
    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        return JSONResponse({"ready": True})

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse(
            {"name": "fusionguard", "version": __version__, "extensions": ["binary_tensor_data", "model_repository"]}
        )

    def _known(self, request: Request) -> ModelState | None:
        if request.path_params["name"] != self.service.name:
            return None
        state = self.service.state
        version = request.path_params.get("version")
        if version not in (None, "", state.version):
            return None
        return state

    def _not_found(self, request: Request) -> JSONResponse:
        name = request.path_params["name"]
        version = request.path_params.get("version")
        what = f"model '{name}'" + (f" version '{version}'" if version else "")
        state = self.service.state
        return _error(404, f"{what} is not served here; this server serves '{self.service.name}' version '{state.version}'")

    async def model_metadata(self, request: Request) -> Response:
        state = self._known(request)
        if state is None:
            return self._not_found(request)
        c = state.scorer.contract
        outputs = [{"name": c.score_output, "datatype": "FP32", "shape": [-1]}]
        if c.attention_output is not None:
            outputs.append({"name": c.attention_output, "datatype": "FP32", "shape": [-1, c.attention_heads or -1, c.n_keys or -1]})
        return JSONResponse(
            {
                "name": self.service.name,
                "versions": [state.version],
                "platform": "onnxruntime_onnx",
                "inputs": tensor_metadata([(s.name, s.dtype, s.shape) for s in c.inputs]),
                "outputs": outputs,
                "parameters": {
                    "sha256": state.scorer.sha256,
                    "provider": state.scorer.provider,
                    "variant": c.variant,
                    "modalities": {k: list(v) for k, v in c.modalities.items()},
                    "attention_keys": {k: list(v) for k, v in c.attention_keys.items()},
                },
            }
        )

    async def model_ready(self, request: Request) -> Response:
        state = self._known(request)
        if state is None:
            return self._not_found(request)
        return JSONResponse({"name": self.service.name, "ready": True})

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    async def load(self, request: Request) -> Response:
        if request.path_params["name"] != self.service.name:
            return self._not_found(request)
        try:
            state, changed = await self.reload()
        except FusionGuardError as err:
            return _error(500, f"reload failed, still serving version '{self.service.state.version}': {err}")
        return JSONResponse({"name": self.service.name, "version": state.version, "changed": changed})

    # ----- inference -------------------------------------------------------------------------
    async def _read_body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        too_large = ProtocolError(
            "body_too_large", f"request body exceeds the limit of {limit} bytes; send fewer candidates per request", 413
        )
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    async def infer(self, request: Request) -> Response:
        m = self.metrics
        if self._known(request) is None:
            m.invalid.labels(UNKNOWN_MODEL, "unknown_model").inc()
            m.requests.labels(UNKNOWN_MODEL, "invalid").inc()
            return self._not_found(request)
        name = self.service.name
        if self._inflight >= self.config.max_concurrency:
            m.requests.labels(name, "rejected").inc()
            return _error(503, f"server busy: {self._inflight} requests in progress (limit {self.config.max_concurrency}); retry later")
        self._inflight += 1
        m.inflight.inc()
        start = time.perf_counter()
        try:
            body = await self._read_body(request)
            req = decode_request(body, request.headers)
            telemetry = self.service.sampler()
            scored = await anyio.to_thread.run_sync(self.service.score, req.inputs, telemetry, limiter=self._limiter)
            payload, headers = encode_response(name, scored.state.version, scored.response_outputs(), req)
            record_scored(m, name, scored)
            if telemetry:
                self.worker.submit(scored)
            return Response(payload, headers=headers)
        except ProtocolError as err:
            return self._invalid(name, err.reason, err.status, str(err))
        except InvalidFeedsError as err:
            return self._invalid(name, err.reasons[0], 400, str(err))
        except Exception as err:  # never crash the server on one request; logged with traceback
            logger.exception("inference failed")
            m.requests.labels(name, "error").inc()
            return _error(500, f"internal error while scoring: {type(err).__name__}: {err}")
        finally:
            self._inflight -= 1
            m.inflight.dec()
            m.request_duration.labels(name).observe(time.perf_counter() - start)

    def _invalid(self, name: str, reason: str, status: int, message: str) -> JSONResponse:
        self.metrics.invalid.labels(name, reason).inc()
        self.metrics.requests.labels(name, "invalid").inc()
        return _error(status, message)
