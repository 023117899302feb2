"""The monitor's Prometheus metrics, all in one place, registered in a registry passed in.

Names, types and labels follow docs/interfaces.md (the alert rules and the dashboard in deploy/
are written against them). Histograms are used for everything a dashboard aggregates across
replicas (latencies, batch sizes, shares); gauges only for per-replica state (windowed drift,
windowed shadow correlation, readiness, model identity).

Labels stay low-cardinality: `model` is the served model's name (requests for unknown names are
counted under `model="_unknown"`), `version` the served version, `reason` one of
`INVALID_REASONS`.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

UNKNOWN_MODEL = "_unknown"

# The closed set of `reason` labels of fusionguard_invalid_requests_total.
INVALID_REASONS = (
    # the request itself (monitor.protocol, monitor.app)
    "unknown_model",
    "body_too_large",
    "malformed_json",
    "malformed_binary",
    "unsupported_datatype",
    "unknown_output",
    # the tensors against the model contract (fusionguard.scorer.feed_problems)
    "missing_input",
    "unexpected_input",
    "not_an_array",
    "wrong_dtype",
    "wrong_shape",
    "row_mismatch",
    "empty",
    "non_finite",
)

OUTCOMES = ("ok", "invalid", "error", "rejected")

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
_UNIT_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))  # 0.05 .. 1.0
_CORR_BUCKETS = (-0.5, 0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0)


@dataclass
class MonitorMetrics:
    """Every metric the monitor exports. Build with `MonitorMetrics.create(registry)`."""

    registry: CollectorRegistry
    requests: Counter
    invalid: Counter
    request_duration: Histogram
    inference_duration: Histogram
    batch_size: Histogram
    modality_share: Histogram
    attention_mass: Histogram
    attention_entropy: Histogram
    telemetry_requests: Counter
    telemetry_dropped: Counter
    shadow_spearman: Gauge
    shadow_spearman_per_request: Histogram
    drift_psi: Gauge
    drift_pvalue: Gauge
    model_info: Gauge
    model_ready: Gauge
    inflight: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> MonitorMetrics:
        p = "fusionguard_"
        return cls(
            registry=registry,
            requests=Counter(
                p + "requests", "Inference requests by outcome (ok, invalid, error, rejected).",
                ["model", "outcome"], registry=registry,
            ),
            invalid=Counter(
                p + "invalid_requests", "Requests rejected as invalid input, by reason.",
                ["model", "reason"], registry=registry,
            ),
            request_duration=Histogram(
                p + "request_duration_seconds", "Wall time of an inference request, body read to response.",
                ["model"], buckets=_LATENCY_BUCKETS, registry=registry,
            ),
            inference_duration=Histogram(
                p + "inference_duration_seconds", "Wall time of the ONNX Runtime call (masked passes included).",
                ["model"], buckets=_LATENCY_BUCKETS, registry=registry,
            ),
            batch_size=Histogram(
                p + "batch_size", "Candidates (rows) per inference request.",
                ["model"], buckets=_BATCH_BUCKETS, registry=registry,
            ),
            modality_share=Histogram(
                p + "modality_share", "Per-request mean exact Shapley share of each modality (sampled requests).",
                ["model", "version", "modality"], buckets=_UNIT_BUCKETS, registry=registry,
            ),
            attention_mass=Histogram(
                p + "visual_attention_mass", "Per-request mean attention mass on visual keys (sampled requests).",
                ["model", "version"], buckets=_UNIT_BUCKETS, registry=registry,
            ),
            attention_entropy=Histogram(
                p + "attention_entropy", "Per-request mean normalised attention entropy (sampled requests).",
                ["model", "version"], buckets=_UNIT_BUCKETS, registry=registry,
            ),
            telemetry_requests=Counter(
                p + "telemetry_requests", "Requests whose telemetry (masked passes) was computed.",
                ["model"], registry=registry,
            ),
            telemetry_dropped=Counter(
                p + "telemetry_dropped", "Telemetry items dropped because the background queue was full.",
                ["model"], registry=registry,
            ),
            shadow_spearman=Gauge(
                p + "shadow_spearman", "Windowed mean per-request Spearman correlation of served and shadow scores.",
                ["model"], registry=registry,
            ),
            shadow_spearman_per_request=Histogram(
                p + "shadow_spearman_per_request", "Per-request Spearman correlation of served and shadow scores.",
                ["model"], buckets=_CORR_BUCKETS, registry=registry,
            ),
            drift_psi=Gauge(
                p + "drift_psi", "Population stability index of a windowed feature against the reference profile.",
                ["model", "feature"], registry=registry,
            ),
            drift_pvalue=Gauge(
                p + "drift_pvalue", "Two-sample Kolmogorov-Smirnov p-value of a windowed feature vs the profile sample.",
                ["model", "feature"], registry=registry,
            ),
            model_info=Gauge(
                p + "model_info", "The served model (value 1).",
                ["model", "version", "sha256", "provider"], registry=registry,
            ),
            model_ready=Gauge(p + "model_ready", "1 when the model is loaded and serving.", ["model"], registry=registry),
            inflight=Gauge(p + "inflight_requests", "Inference requests admitted and not yet answered.", registry=registry),
        )
