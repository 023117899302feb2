"""The monitor: an Open Inference Protocol v2 service on the core scorer with live modality
contribution telemetry, drift against the gate's reference profile, and Prometheus metrics."""

from monitor.app import AppConfig, MonitorApp, record_scored
from monitor.batching import BatchingConfig, DynamicBatcher
from monitor.drift import DriftResult, DriftTracker, psi
from monitor.metrics import ERROR_REASONS, INVALID_REASONS, OUTCOMES, MonitorMetrics
from monitor.protocol import InferRequest, ProtocolError, decode_request, encode_response
from monitor.replay import ReplayConfig, ReplayResult, replay
from monitor.server import ServeConfig, ServeResult, build, configure_logging, serve
from monitor.service import ModelNotLoadedError, ModelService, ModelState, Sampler, Scored, ServiceConfig
from monitor.telemetry import RequestTelemetry, TelemetryConfig, TelemetryWorker, request_values

__all__ = [
    "AppConfig",
    "MonitorApp",
    "record_scored",
    "BatchingConfig",
    "DynamicBatcher",
    "DriftResult",
    "DriftTracker",
    "psi",
    "ERROR_REASONS",
    "INVALID_REASONS",
    "OUTCOMES",
    "MonitorMetrics",
    "InferRequest",
    "ProtocolError",
    "decode_request",
    "encode_response",
    "ReplayConfig",
    "ReplayResult",
    "replay",
    "ServeConfig",
    "ServeResult",
    "build",
    "configure_logging",
    "serve",
    "ModelNotLoadedError",
    "ModelService",
    "ModelState",
    "Sampler",
    "Scored",
    "ServiceConfig",
    "RequestTelemetry",
    "TelemetryConfig",
    "TelemetryWorker",
    "request_values",
]
