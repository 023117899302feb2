"""Live contribution telemetry, computed off the request path.

A telemetry-sampled request is answered from its unmasked pass; the three masked passes the exact
two-modality Shapley values need (`fusionguard.masking.shapley_passes`, read by name) run after the
response, here on the worker thread (the app submits a callable that returns the `Scored`) or as
the batcher's deferred jobs. Turning the passes into metrics, scoring the shadow model and
updating the drift windows happens here too, on one background thread fed by a bounded queue:
the response never waits for it, and when the queue is full the item is dropped and counted
(`fusionguard_telemetry_dropped_total`). `replay` calls `process` directly.

Drift is fed one value per feature per sampled request (`fusionguard.profile.request_means`):
the request, not the row, is the independent unit (see `fusionguard.monitor.drift`).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fusionguard.metrics import QueryGroups, attention_entropy, attention_mass, spearman_per_query
from fusionguard.profile import ReferenceProfile, feature_summaries, request_means
from fusionguard.scorer import Scorer
from fusionguard.monitor.drift import DEFAULT_WINDOW, DriftTracker
from fusionguard.monitor.metrics import MonitorMetrics
from fusionguard.monitor.service import Scored

logger = logging.getLogger(__name__)

_STOP = object()


@dataclass(frozen=True)
class TelemetryConfig:
    queue_size: int = 64  # items waiting for the worker (memory: about queue_size x request size); beyond: dropped, counted
    shadow_window: int = 200  # requests in the windowed mean shadow Spearman
    drift_window: int = DEFAULT_WINDOW  # telemetry-sampled requests per drift window (one value each per feature)
    drift_min_requests: int | None = None  # requests needed before PSI / KS are reported; None: a full window
    drift_every: int = 10  # recompute drift gauges every this many processed items


@dataclass(frozen=True)
class RequestTelemetry:
    """The per-request numbers derived from one scored request (NaN where not applicable)."""

    visual_share: float  # mean over candidates of the exact Shapley visual share
    visual_attention_mass: float  # mean over candidates and heads
    attention_entropy: float  # mean over candidates and heads, normalised by log K
    shadow_spearman: float  # Spearman of served vs shadow scores over the request's candidates


def request_values(scored: Scored) -> dict[str, float]:
    """One value per drift feature for a scored request: the mean over its candidates of each
    input's L2 norm, of the Shapley visual share (telemetry passes only) and of the visual
    attention mass (heads averaged), as `fusionguard.profile.request_means` reduces them for the
    reference profile. Features the request cannot give are absent."""
    per_row: dict[str, np.ndarray] = dict(feature_summaries(scored.feeds))
    if scored.telemetry and scored.passes is not None:
        per_row["visual_share"] = scored.passes.values(scored.by_mask())[2]
    full, keys = scored.full, scored.state.scorer.contract.attention_keys
    if full.attention is not None and "visual" in keys:
        per_row["attention_mass"] = attention_mass(full.attention, keys["visual"])  # (N, H)
    return {name: float(v[0]) for name, v in request_means(per_row).items()}


class TelemetryWorker:
    """Turns scored requests into telemetry metrics; `submit` from the request path, never blocks."""

    def __init__(
        self,
        model_name: str,
        metrics: MonitorMetrics,
        shadow: Scorer | None = None,
        config: TelemetryConfig = TelemetryConfig(),
    ) -> None:
        self.name = model_name
        self.metrics = metrics
        self.shadow = shadow
        self.config = config
        self._queue: queue.Queue = queue.Queue(maxsize=config.queue_size)
        self._thread: threading.Thread | None = None
        self._spearman: deque[float] = deque(maxlen=config.shadow_window)
        self._drift: DriftTracker | None = None
        self._drift_profile: ReferenceProfile | None = None
        self._processed = 0
        self._shadow_warned = False
        self._lock = threading.Lock()  # process() may be called from the worker and from replay/flush

    # ----- the background thread -------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="fusionguard-telemetry", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Process what is queued, then stop the thread."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._thread = None
        self.flush()

    def submit(self, scored: Scored | Callable[[], Scored]) -> bool:
        """Queue a scored request; False (and counted) when the queue is full.

        `scored` may be a callable that returns the `Scored` on the worker thread: the app hands
        over a sampled request this way, with its masked Shapley passes still to run (or to be
        collected from the batcher) after its response was sent."""
        try:
            self._queue.put_nowait(scored)
        except queue.Full:
            self.metrics.telemetry_dropped.labels(self.name).inc()
            return False
        return True

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until every queued item is processed (tests, replay); True when idle."""
        done = threading.Event()

        def waiter() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=waiter, daemon=True).start()
        ok = done.wait(timeout)
        if ok:
            self.flush()
        return ok

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                self.process(item() if callable(item) else item)
            except Exception:  # a bad item must not kill the worker; it is logged with its traceback
                logger.exception("telemetry processing failed")
            finally:
                self._queue.task_done()

    # ----- the work --------------------------------------------------------------------------
    def process(self, scored: Scored) -> RequestTelemetry:
        with self._lock:
            return self._process(scored)

    def _process(self, scored: Scored) -> RequestTelemetry:
        state = scored.state
        m, labels = self.metrics, (self.name, state.version)
        full = scored.full
        per_request = request_values(scored)  # the request's one value per feature (drift unit)

        share = float(per_request.get("visual_share", np.nan))
        if np.isfinite(share):
            m.modality_share.labels(*labels, "visual").observe(share)
            m.modality_share.labels(*labels, "text").observe(1.0 - share)

        mass = float(per_request.get("attention_mass", np.nan))
        entropy = float("nan")
        if "attention_mass" in per_request:
            m.attention_mass.labels(*labels).observe(mass)
            if full.attention.shape[2] >= 2:
                entropy = float(attention_entropy(full.attention).mean())
                m.attention_entropy.labels(*labels).observe(entropy)

        rho = self._shadow(full.score, scored.feeds)
        self._update_drift(state.profile, per_request)
        return RequestTelemetry(share, mass, entropy, rho)

    def _shadow(self, served: np.ndarray, feeds: dict[str, np.ndarray]) -> float:
        if self.shadow is None:
            return float("nan")
        names = self.shadow.contract.input_names
        missing = [n for n in names if n not in feeds]
        if missing:
            if not self._shadow_warned:
                logger.warning("shadow model needs inputs %s that the served model does not take; skipping", missing)
                self._shadow_warned = True
            return float("nan")
        shadow_score = self.shadow.run({n: feeds[n] for n in names})[0].score
        n = served.shape[0]
        groups = QueryGroups.from_arrays(np.zeros(n, np.int64), np.arange(n), np.zeros(n))  # the request = one query
        rho = float(spearman_per_query(groups, served, shadow_score)[0])
        if np.isfinite(rho):
            self.metrics.shadow_spearman_per_request.labels(self.name).observe(rho)
            self._spearman.append(rho)
            self.metrics.shadow_spearman.labels(self.name).set(float(np.mean(self._spearman)))
        return rho

    def _update_drift(self, profile: ReferenceProfile | None, values: dict[str, float]) -> None:
        if profile is None:
            return
        if profile is not self._drift_profile:  # a reload brought a new profile: start fresh windows
            self._drift_profile = profile
            self._drift = DriftTracker(profile, self.config.drift_window, self.config.drift_min_requests)
            for feature in self._drift.features:  # no stale value of the old window until the new one is full
                self.metrics.drift_psi.labels(self.name, feature).set(float("nan"))
                self.metrics.drift_pvalue.labels(self.name, feature).set(float("nan"))
        self._drift.add(values)
        self._processed += 1
        if self._processed % self.config.drift_every == 0:
            self._publish_drift()

    def _publish_drift(self) -> None:
        if self._drift is None:
            return
        for r in self._drift.results():
            self.metrics.drift_psi.labels(self.name, r.feature).set(r.psi)
            self.metrics.drift_pvalue.labels(self.name, r.feature).set(r.pvalue)

    def flush(self) -> None:
        """Publish the drift gauges now (end of replay, tests, shutdown)."""
        with self._lock:
            self._publish_drift()
