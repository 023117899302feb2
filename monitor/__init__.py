"""The monitor: an Open Inference Protocol v2 service on the core scorer with live modality
contribution telemetry, drift against the gate's reference profile, and Prometheus metrics.

The public names load on first use (PEP 562 module `__getattr__`), so that reading the
package's command specs (`fusionguard.monitor.commands`, for `fusionguard --help`) imports neither
ONNX Runtime nor the serving stack.
"""

from fusionguard.lazy import lazy_exports

_EXPORTS = {
    "AppConfig": "fusionguard.monitor.app",
    "BatchingConfig": "fusionguard.monitor.batching",
    "DriftResult": "fusionguard.monitor.drift",
    "DriftTracker": "fusionguard.monitor.drift",
    "DynamicBatcher": "fusionguard.monitor.batching",
    "ERROR_REASONS": "fusionguard.monitor.metrics",
    "INVALID_REASONS": "fusionguard.monitor.metrics",
    "InferRequest": "fusionguard.monitor.protocol",
    "ModelNotLoadedError": "fusionguard.monitor.service",
    "ModelService": "fusionguard.monitor.service",
    "ModelState": "fusionguard.monitor.service",
    "MonitorApp": "fusionguard.monitor.app",
    "MonitorMetrics": "fusionguard.monitor.metrics",
    "OUTCOMES": "fusionguard.monitor.metrics",
    "ProtocolError": "fusionguard.monitor.protocol",
    "ReplayConfig": "fusionguard.monitor.replay",
    "ReplayResult": "fusionguard.monitor.replay",
    "RequestTelemetry": "fusionguard.monitor.telemetry",
    "Sampler": "fusionguard.monitor.service",
    "Scored": "fusionguard.monitor.service",
    "ServeConfig": "fusionguard.monitor.server",
    "ServeResult": "fusionguard.monitor.server",
    "ServiceConfig": "fusionguard.monitor.service",
    "TelemetryConfig": "fusionguard.monitor.telemetry",
    "TelemetryWorker": "fusionguard.monitor.telemetry",
    "build": "fusionguard.monitor.server",
    "configure_logging": "fusionguard.monitor.server",
    "decode_request": "fusionguard.monitor.protocol",
    "encode_response": "fusionguard.monitor.protocol",
    "psi": "fusionguard.monitor.drift",
    "record_scored": "fusionguard.monitor.app",
    "replay": "fusionguard.monitor.replay",
    "request_values": "fusionguard.monitor.telemetry",
    "serve": "fusionguard.monitor.server",
}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
