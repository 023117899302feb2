"""The monitor: an Open Inference Protocol v2 service on the core scorer with live modality
contribution telemetry, drift against the gate's reference profile, and Prometheus metrics.

The public names load on first use (PEP 562 module `__getattr__`), so that reading the
package's command specs (`monitor.commands`, for `fusionguard --help`) imports neither
ONNX Runtime nor the serving stack.
"""

from fusionguard.lazy import lazy_exports

_EXPORTS = {
    "AppConfig": "monitor.app",
    "BatchingConfig": "monitor.batching",
    "DriftResult": "monitor.drift",
    "DriftTracker": "monitor.drift",
    "DynamicBatcher": "monitor.batching",
    "ERROR_REASONS": "monitor.metrics",
    "INVALID_REASONS": "monitor.metrics",
    "InferRequest": "monitor.protocol",
    "ModelNotLoadedError": "monitor.service",
    "ModelService": "monitor.service",
    "ModelState": "monitor.service",
    "MonitorApp": "monitor.app",
    "MonitorMetrics": "monitor.metrics",
    "OUTCOMES": "monitor.metrics",
    "ProtocolError": "monitor.protocol",
    "ReplayConfig": "monitor.replay",
    "ReplayResult": "monitor.replay",
    "RequestTelemetry": "monitor.telemetry",
    "Sampler": "monitor.service",
    "Scored": "monitor.service",
    "ServeConfig": "monitor.server",
    "ServeResult": "monitor.server",
    "ServiceConfig": "monitor.service",
    "TelemetryConfig": "monitor.telemetry",
    "TelemetryWorker": "monitor.telemetry",
    "build": "monitor.server",
    "configure_logging": "monitor.server",
    "decode_request": "monitor.protocol",
    "encode_response": "monitor.protocol",
    "psi": "monitor.drift",
    "record_scored": "monitor.app",
    "replay": "monitor.replay",
    "request_values": "monitor.telemetry",
    "serve": "monitor.server",
}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
