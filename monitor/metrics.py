"""The monitor's Prometheus metrics, all in one place, registered in a registry passed in.

Names, types and labels follow docs/interfaces.md (the alert rules and the dashboard in deploy/
are written against them). Histograms are used for everything a dashboard aggregates across
replicas (latencies, batch sizes, shares); gauges only for per-replica state (windowed drift,
windowed shadow correlation, readiness, model identity).

Labels stay low-cardinality: `model` is the served model's name (requests for unknown names are
counted under `model="_unknown"`), `version` the served version, `reason` one of
`INVALID_REASONS` or `ERROR_REASONS`, `outcome` one of `OUTCOMES`.

With `--workers N` every worker writes its values to prometheus_client's multiprocess files and
/metrics merges them: counters and histograms sum over the workers; each gauge names how it
merges (`multiprocess_mode`, "live" = only workers still running): `model_ready` livemin (the
replica is ready when every worker is), `inflight_requests` livesum, `model_info` livemax (1
while any worker serves that version), `shadow_spearman` and the drift gauges livemostrecent
(each worker keeps its own windows; the most recently written one is shown). The process_* and
python_* collectors describe one process and are left out in that mode.

Every label set that the alert rules and the dashboard read exists from the start at zero
(`MonitorMetrics.init_labels`), so a rate over a fresh replica is 0, not absent. Gauges whose
zero would be a lie (drift, windowed shadow correlation) appear only once they are computed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

UNKNOWN_MODEL = "_unknown"

# The closed set of `reason` labels of fusionguard_invalid_requests_total.
INVALID_REASONS = (
    # the request itself (fusionguard.monitor.protocol, fusionguard.monitor.app)
    "unknown_model",
    "body_too_large",
    "unsupported_encoding",
    "malformed_encoding",
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

# ok: answered 200; invalid: 4xx for bad input (reason in fusionguard_invalid_requests_total);
# error: 500 (reason in fusionguard_request_errors_total); rejected: 503, admission full;
# unavailable: 503, no model loaded; timeout: 408, the body did not arrive in time;
# disconnected: the client hung up before the body was read (nobody to answer).
OUTCOMES = ("ok", "invalid", "error", "rejected", "unavailable", "timeout", "disconnected")

# The closed set of `reason` labels of fusionguard_request_errors_total (requests answered 500).
ERROR_REASONS = ("non_finite_output", "inference_failed")

# Modalities whose share histogram is initialised when a version is loaded.
MODALITIES = ("text", "visual")

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
_MERGED_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_UNIT_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))  # 0.05 .. 1.0
_CORR_BUCKETS = (-0.5, 0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0)


@dataclass(frozen=True)
class HotMetrics:
    """The children every scored request touches, for one model name."""

    ok: Counter
    request_duration: Histogram
    inference_duration: Histogram
    batch_size: Histogram
    telemetry_requests: Counter


@dataclass
class MonitorMetrics:
    """Every metric the monitor exports. Build with `MonitorMetrics.create(registry)`."""

    registry: CollectorRegistry
    requests: Counter
    invalid: Counter
    errors: Counter
    request_duration: Histogram
    inference_duration: Histogram
    batch_size: Histogram
    merged_requests: Histogram
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
    _hot: dict[str, HotMetrics] = field(default_factory=dict, repr=False)

    @classmethod
    def create(cls, registry: CollectorRegistry) -> MonitorMetrics:
        p = "fusionguard_"
        return cls(
            registry=registry,
            requests=Counter(
                p + "requests", "Inference requests by outcome (" + ", ".join(OUTCOMES) + ").",
                ["model", "outcome"], registry=registry,
            ),
            invalid=Counter(
                p + "invalid_requests", "Requests rejected as invalid input, by reason.",
                ["model", "reason"], registry=registry,
            ),
            errors=Counter(
                p + "request_errors", "Requests answered 500, by reason.",
                ["model", "reason"], registry=registry,
            ),
            request_duration=Histogram(
                p + "request_duration_seconds", "Wall time of an inference request, body read to response.",
                ["model"], buckets=_LATENCY_BUCKETS, registry=registry,
            ),
            inference_duration=Histogram(
                p + "inference_duration_seconds", "Wall time of the ONNX Runtime call on the request path (the unmasked pass).",
                ["model"], buckets=_LATENCY_BUCKETS, registry=registry,
            ),
            batch_size=Histogram(
                p + "batch_size", "Candidates (rows) per inference request.",
                ["model"], buckets=_BATCH_BUCKETS, registry=registry,
            ),
            merged_requests=Histogram(
                p + "merged_requests", "Requests merged into one ONNX Runtime call by dynamic batching.",
                ["model"], buckets=_MERGED_BUCKETS, registry=registry,
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
                ["model"], multiprocess_mode="livemostrecent", registry=registry,
            ),
            shadow_spearman_per_request=Histogram(
                p + "shadow_spearman_per_request", "Per-request Spearman correlation of served and shadow scores.",
                ["model"], buckets=_CORR_BUCKETS, registry=registry,
            ),
            drift_psi=Gauge(
                p + "drift_psi", "Population stability index of a windowed feature against the reference profile.",
                ["model", "feature"], multiprocess_mode="livemostrecent", registry=registry,
            ),
            drift_pvalue=Gauge(
                p + "drift_pvalue", "Two-sample Kolmogorov-Smirnov p-value of a windowed feature vs the profile sample.",
                ["model", "feature"], multiprocess_mode="livemostrecent", registry=registry,
            ),
            model_info=Gauge(
                p + "model_info", "The served model (value 1).",
                ["model", "version", "sha256", "provider"], multiprocess_mode="livemax", registry=registry,
            ),
            model_ready=Gauge(
                p + "model_ready", "1 when the model is loaded and serving.",
                ["model"], multiprocess_mode="livemin", registry=registry,
            ),
            inflight=Gauge(
                p + "inflight_requests", "Inference requests admitted and not yet answered.",
                multiprocess_mode="livesum", registry=registry,
            ),
        )

    def hot(self, model: str) -> HotMetrics:
        """The per-request children of `model`, looked up once (`labels()` costs a lock and a
        dict lookup per call, several times per request)."""
        cached = self._hot.get(model)
        if cached is None:
            cached = self._hot[model] = HotMetrics(
                ok=self.requests.labels(model, "ok"),
                request_duration=self.request_duration.labels(model),
                inference_duration=self.inference_duration.labels(model),
                batch_size=self.batch_size.labels(model),
                telemetry_requests=self.telemetry_requests.labels(model),
            )
        return cached

    def init_labels(self, model: str) -> None:
        """Create every per-model label set at zero (alerts and dashboards see 0, not nothing)."""
        for outcome in OUTCOMES:
            self.requests.labels(model, outcome)
        for reason in INVALID_REASONS:
            self.invalid.labels(model, reason)
        for reason in ERROR_REASONS:
            self.errors.labels(model, reason)
        self.requests.labels(UNKNOWN_MODEL, "invalid")
        self.invalid.labels(UNKNOWN_MODEL, "unknown_model")
        for metric in (self.request_duration, self.inference_duration, self.batch_size, self.merged_requests,
                       self.telemetry_requests,
                       self.telemetry_dropped, self.shadow_spearman_per_request):
            metric.labels(model)
        self.model_ready.labels(model)

    def init_version_labels(self, model: str, version: str) -> None:
        """Create the per-version telemetry histograms at zero when a version starts serving."""
        for modality in MODALITIES:
            self.modality_share.labels(model, version, modality)
        self.attention_mass.labels(model, version)
        self.attention_entropy.labels(model, version)


def register_runtime_collectors(registry: CollectorRegistry) -> None:
    """process_* (CPU, memory, file descriptors), python_info and python_gc_* in `registry`."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
