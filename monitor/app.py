"""The Starlette application: Open Inference Protocol v2 REST endpoints plus /metrics.

Routes:
    GET  /v2/health/live, /v2/health/ready, /v2
    GET  /v2/models/{name}[/versions/{version}], /v2/models/{name}[/versions/{version}]/ready
    POST /v2/models/{name}[/versions/{version}]/infer     JSON tensors or binary-tensor extension
    POST /v2/repository/index                              the served model and its state
    POST /v2/repository/models/{name}/load                 (re)load the registry's current model
    POST /v2/repository/models/{name}/unload               stop serving (not ready until a load)
    GET  /metrics                                          prometheus_client's ASGI exposition

Readiness: `/v2/health/ready` and the model's `/ready` answer 503 while no model is loaded (a
registry with nothing promoted yet, or after unload); a load, SIGHUP or the registry poll makes
the server ready once `current` names a version.

An inference request first has its body read, within `body_timeout_s` (else 408) and while at
most `max_body_readers` others are reading theirs (else 503); only then does it ask for
admission: at most `max_concurrency` requests are admitted at once (running or waiting for one of
`inference_threads` ONNX Runtime workers), the next one is answered 503 at once (outcome
`rejected`). So a slow upload holds a connection, never an inference slot. Bodies larger than
`max_body_bytes` (also once inflated from gzip/deflate) get 413; every other bad input gets 400
with `{"error": ...}` and a counted reason; a model output that is not finite gets 500 with
reason `non_finite_output`. Every response the app sends is JSON (or the binary-tensor layout).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
import os
import re
import signal
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import anyio.to_thread
import numpy as np
from prometheus_client import CollectorRegistry, make_asgi_app
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fusionguard import __version__
from fusionguard.errors import FusionGuardError
from fusionguard.scorer import InvalidFeedsError, Mask
from fusionguard.monitor.batching import BatchingConfig, DynamicBatcher
from fusionguard.monitor.metrics import UNKNOWN_MODEL, MonitorMetrics, register_runtime_collectors
from fusionguard.monitor.protocol import (
    ProtocolError,
    decode_content,
    decode_request,
    encode_content,
    encode_response,
    flat_parameters,
    negotiate_encoding,
    tensor_metadata,
)
from fusionguard.monitor.service import ModelNotLoadedError, ModelService, ModelState, Scored
from fusionguard.monitor.telemetry import TelemetryConfig, TelemetryWorker

logger = logging.getLogger(__name__)

_CONTROL_BODY_LIMIT = 64 * 1024  # bodies of repository calls (tiny JSON)


@dataclass(frozen=True)
class AppConfig:
    max_concurrency: int = 64  # admitted inference requests (running + waiting); beyond: 503
    max_body_bytes: int = 32 * 1024 * 1024  # larger request bodies (also once inflated) get 413
    inference_threads: int = 1  # concurrent ONNX Runtime calls (each may use several intra-op threads)
    handle_sighup: bool = True  # reload on SIGHUP (only possible when the server runs in the main thread)
    body_timeout_s: float = 30.0  # a request body must arrive completely within this; else 408
    max_body_readers: int = 256  # requests receiving their body at once; beyond: 503
    registry_poll_s: float | None = None  # reload from the registry this often (None: only on demand)
    # A request whose session.run has at most this many rows (N: its masked passes run later) runs on the
    # event loop: for a small batch the hop to a worker thread costs more than the model call.
    inline_rows: int = 256
    batching: BatchingConfig = BatchingConfig()  # dynamic batching (off by default; see fusionguard.monitor.batching)


def record_scored(m: MonitorMetrics, name: str, scored: Scored) -> None:
    """The request-path metrics of one successfully scored request (server and replay alike)."""
    hot = m.hot(name)
    hot.inference_duration.observe(scored.seconds)
    hot.batch_size.observe(scored.full.score.shape[0])
    if scored.telemetry:
        hot.telemetry_requests.inc()
    hot.ok.inc()


def _error(status: int, message: str, **extra: object) -> JSONResponse:
    return JSONResponse({**extra, "error": message}, status_code=status)


# The inference URLs (starlette's `{param}` matches one path segment, [^/]+).
_INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")

# An answer of the raw inference path: (status, body, headers).
_Answer = tuple[int, bytes, dict[str, str]]


def _json_answer(status: int, message: str, **extra: object) -> _Answer:
    """`_error`'s answer, byte for byte as starlette's JSONResponse renders it."""
    return _doc_answer(status, {**extra, "error": message})


def _doc_answer(status: int, doc: dict) -> _Answer:
    body = json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    return status, body, {"content-type": "application/json"}


class _Disconnected(Exception):
    """The client went away while sending its request body."""


class _MonitorStarlette(Starlette):
    """Starlette with the inference POST answered before routing and middleware.

    `POST /v2/models/{name}[/versions/{version}]/infer` is the hot path: matched by one regular
    expression and handed to `MonitorApp.infer_asgi`, which reads the body from `receive`,
    answers through `send` and catches every exception itself (a JSON 500, as the middleware
    would). Everything else (other methods on that path: 405) goes through starlette as before.
    """

    def __init__(self, infer, **kwargs) -> None:  # noqa: ANN001 - MonitorApp.infer_asgi
        super().__init__(**kwargs)
        self._infer = infer

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001 - ASGI
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            match = _INFER_PATH.fullmatch(scope["path"])
            if match is not None:
                await self._infer(match.group(1), match.group(2), scope, receive, send)
                return
        await super().__call__(scope, receive, send)


class _ASGIEndpoint:
    """Wraps a plain ASGI callable so that starlette's Route passes it scope/receive/send."""

    def __init__(self, app) -> None:  # noqa: ANN001 - any ASGI callable
        self._app = app

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        await self._app(scope, receive, send)


class MonitorApp:
    """Holds the service, metrics and worker; `app` is the ASGI application."""

    def __init__(
        self,
        service: ModelService,
        registry: CollectorRegistry,
        config: AppConfig = AppConfig(),
        telemetry: TelemetryConfig = TelemetryConfig(),
        *,
        exposition: CollectorRegistry | None = None,
        supervisor_pid: int | None = None,
    ) -> None:
        """
        Args:
            exposition: what /metrics serves; default `registry`. A worker of `--workers N` passes
                a registry holding prometheus_client's MultiProcessCollector (every worker's values).
            supervisor_pid: the process supervising the workers; a load / unload is forwarded to
                it (SIGHUP / SIGUSR1), which passes it on to every worker (fusionguard.monitor.server).
        """
        self.service = service
        self.registry = registry
        self.metrics = MonitorMetrics.create(registry)
        self.metrics.init_labels(service.name)
        if exposition is None:
            register_runtime_collectors(registry)  # per process: meaningless summed over workers
        self._supervisor = supervisor_pid
        self.worker = TelemetryWorker(service.name, self.metrics, service.shadow, telemetry)
        self.config = config
        self._inflight = 0
        self._reading = 0
        self._serving = False  # between lifespan start and shutdown
        self._unloaded = False  # unloaded on request: the registry poll leaves it so
        self._limiter: anyio.CapacityLimiter | None = None
        self._batcher: DynamicBatcher | None = None
        self._deferred: set[asyncio.Task] = set()  # sampled requests' Shapley passes queued in the batcher
        self._publish_model(service.state, None)
        m = "/v2/models/{name}"
        v = "/v2/models/{name}/versions/{version}"
        routes = [  # the inference POSTs are answered before routing (_MonitorStarlette); these serve a root_path and 405s
            Route(m + "/infer", self.infer, methods=["POST"]),
            Route(v + "/infer", self.infer, methods=["POST"]),
            Route("/v2/health/live", self.live),
            Route("/v2/health/ready", self.ready),
            Route("/v2", self.server_metadata),
            Route(m, self.model_metadata),
            Route(v, self.model_metadata),
            Route(m + "/ready", self.model_ready),
            Route(v + "/ready", self.model_ready),
            Route("/v2/repository/index", self.repository_index, methods=["POST"]),
            Route("/v2/repository/models/{name}/load", self.load, methods=["POST"]),
            Route("/v2/repository/models/{name}/unload", self.unload, methods=["POST"]),
            # prometheus_client's own app: OpenMetrics when the scraper asks, gzip when accepted.
            Route("/metrics", _ASGIEndpoint(make_asgi_app(registry=exposition or registry)), methods=["GET"]),
        ]
        self.app = _MonitorStarlette(
            self.infer_asgi,
            routes=routes,
            lifespan=self._lifespan,
            exception_handlers={HTTPException: self._http_error, Exception: self._server_error},
        )

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        """Routing errors (unknown path 404, wrong method 405) in the OIP error shape."""
        status = getattr(exc, "status_code", 500)
        detail = getattr(exc, "detail", "") or "error"
        return _error(status, f"{request.method} {request.url.path}: {detail}")

    async def _server_error(self, request: Request, exc: Exception) -> Response:
        """A bug that escaped a handler: still a JSON answer (starlette logs the traceback)."""
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    # ----- lifecycle -------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self._limiter = anyio.CapacityLimiter(self.config.inference_threads)
        if self.config.batching.enabled:
            merged = self.metrics.merged_requests.labels(self.service.name)
            self._batcher = DynamicBatcher(self.config.batching, on_batch=lambda requests, rows: merged.observe(requests),
                                           make_scored=self.service.scored, inline_rows=self.config.inline_rows)
            self._batcher.start()
        self.worker.start()
        loop = asyncio.get_running_loop()
        hup = self.config.handle_sighup and threading.current_thread() is threading.main_thread()
        if hup:
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self._reload_logged("SIGHUP")))
            if self._supervisor is not None:  # an unload forwarded by the supervisor
                loop.add_signal_handler(signal.SIGUSR1, self._unload_here)
        poll = None
        if self.config.registry_poll_s and self.service.config.registry is not None:
            poll = loop.create_task(self._poll(self.config.registry_poll_s))
        self._serving = True
        self._set_ready()
        try:
            yield
        finally:
            # uvicorn has already drained in-flight requests (graceful shutdown) when we get here.
            if poll is not None:
                poll.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poll
            if hup:
                loop.remove_signal_handler(signal.SIGHUP)
                if self._supervisor is not None:
                    loop.remove_signal_handler(signal.SIGUSR1)
            if self._deferred:  # Shapley passes of answered requests, still to be merged
                await asyncio.gather(*list(self._deferred), return_exceptions=True)
            if self._batcher is not None:
                await self._batcher.stop()
                self._batcher = None
            self._serving = False
            self._set_ready()
            await anyio.to_thread.run_sync(self.worker.stop)
            if self._supervisor is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(os.getpid())  # this worker's live gauges leave the merge

    def _set_ready(self) -> None:
        ready = self._serving and self.service.state is not None
        self.metrics.model_ready.labels(self.service.name).set(1 if ready else 0)

    def _publish_model(self, new: ModelState | None, old: ModelState | None) -> None:
        name = self.service.name
        if old is not None:
            # 0 first: under multiprocess mode a removed series keeps its last value in the file
            # (the gauge's "livemax" then shows 1 only while some worker still serves it)
            self.metrics.model_info.labels(name, old.version, old.scorer.sha256, old.scorer.provider).set(0)
            with contextlib.suppress(KeyError):
                self.metrics.model_info.remove(name, old.version, old.scorer.sha256, old.scorer.provider)
        if new is not None:
            self.metrics.model_info.labels(name, new.version, new.scorer.sha256, new.scorer.provider).set(1)
            self.metrics.init_version_labels(name, new.version)
        self._set_ready()

    async def reload(self) -> tuple[ModelState | None, bool]:
        old = self.service.state
        state, changed = await anyio.to_thread.run_sync(self.service.reload)
        if changed:
            self._publish_model(state, old)
        return state, changed

    async def _reload_logged(self, why: str, log_failure: bool = True, idle_level: int = logging.INFO) -> bool:
        """Reload and log the outcome (SIGHUP, registry poll); False when it failed.

        `idle_level`: the level of "the registry has nothing promoted yet" (the poll repeats it).
        """
        try:
            state, changed = await self.reload()
        except Exception as err:  # noqa: BLE001 - a failure must not kill the signal handler or the poll loop
            if log_failure:
                bug = not isinstance(err, FusionGuardError)
                logger.error("%s reload failed, %s: %s", why, self._serving_what(), err, exc_info=bug)
            return False
        if state is None:
            logger.log(idle_level, "%s reload: the registry has no current model yet; not ready", why)
        elif changed:
            logger.info("%s reload: now serving version %s", why, state.version)
        else:
            logger.debug("%s reload: version %s unchanged", why, state.version)
        return True

    async def _poll(self, every_s: float) -> None:
        failing = False  # a failure is logged once, not on every poll
        while True:
            await asyncio.sleep(every_s)
            if self._unloaded:
                continue
            ok = await self._reload_logged("registry poll", log_failure=not failing, idle_level=logging.DEBUG)
            if ok and failing:
                logger.info("registry poll: reload works again")
            failing = not ok

    def _serving_what(self) -> str:
        state = self.service.state
        return f"still serving version '{state.version}'" if state is not None else "no model loaded"

    # ----- health and metadata ---------------------------------------------------------------
    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        if self.service.state is None:
            return _error(503, self._not_loaded_message(), ready=False)
        return JSONResponse({"ready": True})

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse(
            {"name": "fusionguard", "version": __version__, "extensions": ["binary_tensor_data", "model_repository"]}
        )

    def _not_loaded_message(self) -> str:
        where = f"registry {self.service.config.registry}" if self.service.config.registry else "the model file"
        return (
            f"model '{self.service.name}' is not loaded; once {where} has a current model, "
            f"POST /v2/repository/models/{self.service.name}/load or send SIGHUP"
        )

    def _lookup(self, request: Request) -> ModelState | JSONResponse:
        """The state serving this URL's model (and version), or the error response to send."""
        found = self._lookup_state(request.path_params["name"], request.path_params.get("version"))
        return found if isinstance(found, ModelState) else JSONResponse(found[1], status_code=found[0])

    def _lookup_state(self, name: str, version: str | None) -> ModelState | tuple[int, dict]:
        """The state serving `name` (and `version`), or (status, JSON document) of the error."""
        if name != self.service.name:
            return self._not_found_doc(name, version)
        state = self.service.state
        if state is None:
            return 503, {"name": self.service.name, "ready": False, "error": self._not_loaded_message()}
        if version not in (None, "", state.version):
            return self._not_found_doc(name, version)
        return state

    def _not_found(self, request: Request) -> JSONResponse:
        status, doc = self._not_found_doc(request.path_params["name"], request.path_params.get("version"))
        return JSONResponse(doc, status_code=status)

    def _not_found_doc(self, name: str, version: str | None) -> tuple[int, dict]:
        what = f"model '{name}'" + (f" version '{version}'" if version else "")
        state = self.service.state
        serves = f"'{self.service.name}' version '{state.version}'" if state else f"'{self.service.name}' (not loaded)"
        return 404, {"error": f"{what} is not served here; this server serves {serves}"}

    async def model_metadata(self, request: Request) -> Response:
        state = self._lookup(request)
        if isinstance(state, Response):
            return state
        c = state.scorer.contract
        outputs = [{"name": c.score_output, "datatype": "FP32", "shape": [-1]}]
        if c.attention_output is not None:
            outputs.append({"name": c.attention_output, "datatype": "FP32", "shape": [-1, c.attention_heads or -1, c.n_keys or -1]})
        parameters = {
            "sha256": state.scorer.sha256,
            "provider": state.scorer.provider,
            "variant": c.variant,
            "modalities": {k: list(v) for k, v in c.modalities.items()},
            "attention_keys": {k: list(v) for k, v in c.attention_keys.items()},
        }
        return JSONResponse(
            {
                "name": self.service.name,
                "versions": [state.version],
                "platform": "onnxruntime_onnx",
                "inputs": tensor_metadata([(s.name, s.dtype, s.shape) for s in c.inputs]),
                "outputs": outputs,
                # OIP parameters are strings, numbers or booleans: "modalities.text": "query,text_tokens"
                "parameters": flat_parameters(parameters),
            }
        )

    async def model_ready(self, request: Request) -> Response:
        state = self._lookup(request)
        if isinstance(state, Response):
            return state
        return JSONResponse({"name": self.service.name, "ready": True})

    # ----- the repository extension ----------------------------------------------------------
    async def _control_body(self, request: Request) -> dict:
        """The small JSON body of a repository call ({} when empty)."""
        body = b""
        with anyio.fail_after(self.config.body_timeout_s):
            async for chunk in request.stream():
                body += chunk
                if len(body) > _CONTROL_BODY_LIMIT:
                    raise ProtocolError("body_too_large", f"repository request bodies are at most {_CONTROL_BODY_LIMIT} bytes", 413)
        if not body.strip():
            return {}
        try:
            doc = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise ProtocolError("malformed_json", f"request body is not valid JSON ({type(err).__name__})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("parameters", {}), dict):
            raise ProtocolError("malformed_json", "request body must be a JSON object with an optional 'parameters' object")
        return doc

    async def _control(self, request: Request, handler) -> Response:  # noqa: ANN001
        try:
            doc = await self._control_body(request)
        except ProtocolError as err:
            return _error(err.status, str(err))
        except TimeoutError:
            return _error(408, f"request body did not arrive within {self.config.body_timeout_s} s")
        except ClientDisconnect:
            return _error(400, "client disconnected")
        return await handler(request, doc)

    async def repository_index(self, request: Request) -> Response:
        async def handler(request: Request, doc: dict) -> Response:
            state = self.service.state
            if state is None:
                entry = {"name": self.service.name, "version": "", "state": "UNAVAILABLE",
                         "reason": "unloaded" if self._unloaded else "no current model in the registry"}
            else:
                entry = {"name": self.service.name, "version": state.version, "state": "READY", "reason": ""}
            if doc.get("ready") is True and entry["state"] != "READY":
                return JSONResponse([])
            return JSONResponse([entry])

        return await self._control(request, handler)

    async def load(self, request: Request) -> Response:
        async def handler(request: Request, doc: dict) -> Response:
            if request.path_params["name"] != self.service.name:
                return self._not_found(request)
            params = doc.get("parameters") or {}
            if "config" in params or any(str(k).startswith("file:") for k in params):
                return _error(400, "loading a model from a config or files is not supported; promote it into the registry")
            try:
                state, changed = await self.reload()
            except FusionGuardError as err:
                return _error(500, f"reload failed, {self._serving_what()}: {err}")
            except Exception as err:  # an unexpected failure still gets a JSON answer
                logger.exception("reload failed")
                return _error(500, f"reload failed, {self._serving_what()}: {type(err).__name__}: {err}")
            if state is None:
                return _error(503, self._not_loaded_message())
            self._unloaded = False
            self._tell_supervisor(signal.SIGHUP)  # every other worker reloads too
            return JSONResponse({"name": self.service.name, "version": state.version, "changed": changed})

        return await self._control(request, handler)

    async def unload(self, request: Request) -> Response:
        async def handler(request: Request, doc: dict) -> Response:
            if request.path_params["name"] != self.service.name:
                return self._not_found(request)
            old = self._unload_here()
            self._tell_supervisor(signal.SIGUSR1)  # every other worker unloads too
            return JSONResponse({"name": self.service.name, "unloaded": old.version if old else None})

        return await self._control(request, handler)

    def _unload_here(self) -> ModelState | None:
        old = self.service.unload()
        self._unloaded = True
        self._publish_model(None, old)
        logger.info("unloaded %s (was %s); not ready until a load", self.service.name, old.version if old else "nothing")
        return old

    def _tell_supervisor(self, sig: signal.Signals) -> None:
        if self._supervisor is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._supervisor, sig)

    # ----- inference -------------------------------------------------------------------------
    async def infer_asgi(self, name: str, version: str | None, scope, receive, send) -> None:  # noqa: ANN001
        """The raw ASGI inference path (see `_MonitorStarlette`): no Request, routing or middleware."""
        headers: dict[str, str] = {}
        for key, value in scope["headers"]:
            headers.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))  # the first, as starlette's get
        try:
            status, body, extra = await self._infer(name, version, headers, receive)
        except Exception as err:  # a bug that escaped: still a JSON answer, as the middleware gives
            logger.exception("inference request failed")
            status, body, extra = _json_answer(500, f"internal error: {type(err).__name__}: {err}")
        raw = [(b"content-length", str(len(body)).encode())]
        raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})

    async def infer(self, request: Request) -> Response:
        """The inference route through starlette (only reached with a root_path; see `_MonitorStarlette`)."""
        status, body, headers = await self._infer(
            request.path_params["name"], request.path_params.get("version"), request.headers, request.receive
        )
        return Response(body, status_code=status, headers=headers)

    async def _read_body(self, headers, receive) -> bytes:  # noqa: ANN001 - header mapping, ASGI receive
        limit = self.config.max_body_bytes
        declared = headers.get("content-length")
        too_large = ProtocolError(
            "body_too_large", f"request body exceeds the limit of {limit} bytes; send fewer candidates per request", 413
        )
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks, size = [], 0
        async with asyncio.timeout(self.config.body_timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _Disconnected
                chunk = message.get("body", b"")
                if chunk:
                    size += len(chunk)
                    if size > limit:
                        raise too_large
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)  # one chunk: no copy

    async def _infer(self, name: str, version: str | None, headers, receive) -> _Answer:  # noqa: ANN001
        m = self.metrics
        served = self.service.name
        if name != served:
            m.invalid.labels(UNKNOWN_MODEL, "unknown_model").inc()
            m.requests.labels(UNKNOWN_MODEL, "invalid").inc()
            status, doc = self._not_found_doc(name, version)
            return _doc_answer(status, doc)
        state = self._lookup_state(name, version)
        if not isinstance(state, ModelState):
            status, doc = state
            if status == 503:
                m.requests.labels(served, "unavailable").inc()
            else:  # a version this server does not serve
                m.invalid.labels(UNKNOWN_MODEL, "unknown_model").inc()
                m.requests.labels(UNKNOWN_MODEL, "invalid").inc()
            return _doc_answer(status, doc)
        if self._reading >= self.config.max_body_readers:
            m.requests.labels(served, "rejected").inc()
            return _json_answer(503, f"server busy: {self._reading} request bodies arriving (limit {self.config.max_body_readers}); retry later")

        # 1. The body, before any inference slot is taken.
        self._reading += 1
        try:
            body = await self._read_body(headers, receive)
        except TimeoutError:
            m.requests.labels(served, "timeout").inc()
            return _json_answer(408, f"request body did not arrive within {self.config.body_timeout_s} s")
        except (_Disconnected, ClientDisconnect):
            m.requests.labels(served, "disconnected").inc()
            logger.debug("client disconnected while sending its request body")
            return _json_answer(400, "client disconnected")  # nobody reads it; the server drops it
        except ProtocolError as err:
            return self._invalid(served, err.reason, err.status, str(err))
        finally:
            self._reading -= 1

        # 2. Admission, then decode and score.
        if self._inflight >= self.config.max_concurrency:
            m.requests.labels(served, "rejected").inc()
            return _json_answer(503, f"server busy: {self._inflight} requests in progress (limit {self.config.max_concurrency}); retry later")
        self._inflight += 1
        m.inflight.inc()
        start = time.perf_counter()
        try:
            return await self._score(headers, body)
        finally:
            self._inflight -= 1
            m.inflight.dec()
            m.hot(served).request_duration.observe(time.perf_counter() - start)

    async def _score(self, headers, body: bytes) -> _Answer:  # noqa: ANN001 - header mapping
        m, name = self.metrics, self.service.name
        try:
            body = decode_content(body, headers.get("content-encoding"), self.config.max_body_bytes)
            req = decode_request(body, headers)
            telemetry = self.service.sampler()
            state, masks = self.service.admit(req.inputs, telemetry)  # the one validation
            served = masks[:1]  # the unmasked pass; a sampled request's Shapley passes run after its response
            rows = next(iter(req.inputs.values())).shape[0]
            if self._batcher is not None:
                scored = await self._batcher.score(state, req.inputs, served)
            elif rows <= self.config.inline_rows:
                scored = self.service.run(state, req.inputs, served)  # no thread hop for a small batch
            else:
                scored = await anyio.to_thread.run_sync(self.service.run, state, req.inputs, served, limiter=self._limiter)
            outputs = scored.response_outputs()
            bad = sorted(k for k, v in outputs.items() if not np.isfinite(v).all())
            if bad:
                m.errors.labels(name, "non_finite_output").inc()
                m.requests.labels(name, "error").inc()
                logger.error("model version %s produced non-finite values in %s; answered 500", scored.state.version, bad)
                return _json_answer(500, f"the model produced non-finite values (NaN or inf) in output(s) {bad}; nothing is served for this request")
            payload, extra = encode_response(name, scored.state.version, outputs, req)
            record_scored(m, name, scored)
            if telemetry:
                self._telemetry(scored, masks)
        except ProtocolError as err:
            return self._invalid(name, err.reason, err.status, str(err))
        except InvalidFeedsError as err:
            return self._invalid(name, err.reasons[0], 400, str(err))
        except ModelNotLoadedError as err:  # unloaded between the check and the call
            m.requests.labels(name, "unavailable").inc()
            return _json_answer(503, str(err))
        except Exception as err:  # never crash the server on one request; logged with traceback
            logger.exception("inference failed")
            m.errors.labels(name, "inference_failed").inc()
            m.requests.labels(name, "error").inc()
            return _json_answer(500, f"internal error while scoring: {type(err).__name__}: {err}")
        encoding = negotiate_encoding(headers.get("accept-encoding"))
        extra["vary"] = "Accept-Encoding"
        if encoding is not None:
            payload = encode_content(payload, encoding)
            extra["content-encoding"] = encoding
        return 200, payload, extra

    def _telemetry(self, scored: Scored, masks: tuple[Mask, ...]) -> None:
        """Hand a sampled request to the telemetry worker once its answer is ready.

        Its masked Shapley passes (`masks[1:]`) are not on the request path: they run on the
        worker thread (ONNX Runtime releases the GIL, so beside the event loop), or, with
        batching, in the batcher, merged with the next requests, while the worker waits for them.
        The unmasked pass is the one the client got. Rows are scored independently, so the values
        are those of one four-pass call (the same guarantee as batching; docs/monitor.md).
        """
        if len(masks) == 1:  # a one-modality model: no Shapley passes
            self.worker.submit(scored)
            return
        self.metrics.hot(self.service.name).telemetry_requests.inc()
        if self._batcher is None:
            self.worker.submit(lambda: self._with_passes(scored, masks, self.service.run(scored.state, scored.feeds, masks[1:])))
            return
        done: concurrent.futures.Future = concurrent.futures.Future()
        if not self.worker.submit(lambda: self._with_passes(scored, masks, done.result(timeout=60))):
            return  # the telemetry queue is full: dropped (counted), so its passes are not run either
        task = asyncio.get_running_loop().create_task(self._batcher.score(scored.state, scored.feeds, masks[1:], deferred=True))
        self._deferred.add(task)
        task.add_done_callback(functools.partial(self._passes_done, done))

    def _passes_done(self, done: concurrent.futures.Future, task: asyncio.Task) -> None:
        self._deferred.discard(task)
        if task.cancelled():
            done.set_exception(RuntimeError("the Shapley passes were cancelled (shutdown)"))
        elif task.exception() is not None:
            done.set_exception(task.exception())
        else:
            done.set_result(task.result())

    def _with_passes(self, scored: Scored, masks: tuple[Mask, ...], rest: Scored) -> Scored:
        """The sampled request's `Scored` with all its passes: the served one, then `rest`'s."""
        return self.service.scored(scored.state, scored.feeds, [scored.outputs[0], *rest.outputs], masks,
                                   scored.seconds + rest.seconds)

    def _count_invalid(self, name: str, reason: str) -> None:
        self.metrics.invalid.labels(name, reason).inc()
        self.metrics.requests.labels(name, "invalid").inc()

    def _invalid(self, name: str, reason: str, status: int, message: str) -> _Answer:
        self._count_invalid(name, reason)
        return _json_answer(status, message)
